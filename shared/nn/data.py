"""From uint8 images to model inputs: the device, the conversion, and batches decoded while the model runs."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plada.shared.nn.models import Norm


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_input(
    x: np.ndarray | torch.Tensor,
    *,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    norm: Norm | None = None,
) -> torch.Tensor:
    """uint8 (n, H, W[, C]) → normalised float NCHW at ``size`` with ``channels``, on ``device``; ``norm`` is a
    pretrained model's (mean, std), else [-1, 1]."""
    if isinstance(x, torch.Tensor):  # from pool_batches: already pinned when the device is CUDA
        t = x if x.ndim == 4 else x[..., None]
    else:
        arr = np.ascontiguousarray(x if x.ndim == 4 else x[..., None])
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # PIL and mmap arrays are read-only
        if device.type == "cuda":
            t = t.pin_memory()
    if device.type == "cuda":
        t = t.to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if t.shape[1] != channels:
        t = t.mean(1, keepdim=True) if channels == 1 else t.expand(-1, channels, -1, -1)
    if tuple(t.shape[2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    if norm is None:
        t = t.sub_(0.5).div_(0.5)
    else:
        mean = torch.tensor(norm[0], device=t.device).view(1, -1, 1, 1)
        std = torch.tensor(norm[1], device=t.device).view(1, -1, 1, 1)
        t = (t - mean[:, : t.shape[1]]) / std[:, : t.shape[1]]
    return t.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else t


class _PoolChunks(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, pool: Any, start: int, stop: int, chunk: int) -> None:
        self.pool, self.start, self.stop, self.chunk = pool, start, stop, chunk

    def __len__(self) -> int:
        return math.ceil((self.stop - self.start) / self.chunk)

    def __getitem__(self, i: int) -> torch.Tensor:
        a = self.start + i * self.chunk
        return torch.from_numpy(self.pool.batch(np.arange(a, min(a + self.chunk, self.stop))))


@dataclass(frozen=True)
class PoolItems:
    """Training or evaluation images that stay in the pool: ``pool.batch(indices[...])`` decodes them on
    demand in DataLoader workers, so a 1 % selection of ImageNet-21K (142k JPEGs, ~21 GB decoded) never has to
    fit in memory. ``fit``/``accuracy`` take it wherever they take a uint8 array."""

    pool: Any
    indices: np.ndarray
    workers: int | None = None

    def __len__(self) -> int:
        return len(self.indices)


class _IndexBatches(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, pool: Any, batches: list[np.ndarray]) -> None:
        self.pool, self.batches = pool, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.pool.batch(self.batches[i]))


def batches_of(
    x: np.ndarray | PoolItems, order: list[np.ndarray], device: torch.device
) -> Iterator[np.ndarray | torch.Tensor]:
    """uint8 image batches for the positions in ``order`` (one array of positions per batch), in order."""
    if not isinstance(x, PoolItems):
        for pos in order:
            yield x[pos]
        return
    workers = x.workers
    if workers is None:
        workers = min(16, os.cpu_count() or 1) if getattr(x.pool, "decode_bound", False) else 0
    yield from torch.utils.data.DataLoader(
        _IndexBatches(x.pool, [x.indices[pos] for pos in order]),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        generator=torch.Generator(),  # worker seeds must not consume the global RNG that dropout draws from
    )


def pool_batches(
    pool: Any,
    *,
    device: torch.device,
    chunk: int = 2048,
    start: int = 0,
    stop: int | None = None,
    workers: int | None = None,
) -> Iterator[torch.Tensor]:
    """uint8 pool chunks in order, decoded in DataLoader worker processes while the model runs on the last one.

    Image pools (JPEG folders, tar shards) are decode-bound: by default one worker per core (at most 16) and
    pinned host memory on CUDA; array pools are memory-mapped and need no workers."""
    stop = len(pool) if stop is None else min(stop, len(pool))
    if workers is None:
        workers = min(16, os.cpu_count() or 1) if getattr(pool, "decode_bound", False) else 0
    loader = torch.utils.data.DataLoader(
        _PoolChunks(pool, start, stop, chunk),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        generator=torch.Generator(),  # leave the global RNG (and so the rest of the job) as it was
    )
    yield from loader


def set_threads() -> None:
    """Respect OMP_NUM_THREADS if the operator set it; otherwise let torch use every core."""
    if (n := os.environ.get("OMP_NUM_THREADS")) and n.isdigit():
        torch.set_num_threads(int(n))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")  # unique per writer
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
