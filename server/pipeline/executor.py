"""Where a model runs over the whole pool: in this process (``local``, the default) or on a Ray cluster.

The pool pass (teacher scoring, feature indexing) is the one step whose cost grows with the pool: 14.2M
images for ImageNet-21K. ``local`` decodes in DataLoader workers beside one device. ``ray`` runs the same
model as a Ray Data pipeline: the item ids are the dataset, ``map_batches`` hands chunks of ids to stateful
actors (one per GPU, or ``ray_actors`` CPU actors), each of which opens the pool once, decodes its chunk and
runs the model. Results come back by id, so the output is the local executor's, item for item.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from plada.shared import nn as pnn
from plada.shared.pool import Pool, open_pool

EXECUTORS = ("local", "ray")


def current_executor() -> str:
    """``PLADA_EXECUTOR`` (the worker sets it from its settings); ``local`` when unset."""
    name = os.environ.get("PLADA_EXECUTOR", "local") or "local"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    return name


def predict_pool(
    model: nn.Module,
    pool: Pool,
    *,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    want_features: bool,
    n: int | None = None,
    chunk: int = 2048,
    workers: int | None = None,
    executor: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and features) of ``model`` on the first ``n`` pool items, in pool order."""
    n = len(pool) if n is None else n
    if (executor or current_executor()) == "ray":
        return _ray_predict(model, pool, n, size=size, channels=channels, want_features=want_features, chunk=chunk)
    return pnn.predict(
        model,
        pnn.pool_batches(pool, device=device, chunk=chunk, stop=n, workers=workers),
        size=size,
        channels=channels,
        device=device,
        want_features=want_features,
        progress=progress,
    )


class _PoolModelActor:
    """One per GPU (or CPU slot): loads the pool and the model once, then scores chunks of item ids."""

    def __init__(self, model: nn.Module, pool_root: str, size: tuple[int, int], channels: int, features: bool) -> None:
        pnn.set_threads()
        self.device = pnn.pick_device("auto")
        self.model, self.pool = model, open_pool(pool_root)
        self.size, self.channels, self.features = size, channels, features

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        z, f = pnn.predict(
            self.model,
            [self.pool.batch(ids)],
            size=self.size,
            channels=self.channels,
            device=self.device,
            want_features=self.features,
        )
        out = {"id": ids, "logits": z}
        if f is not None:
            out["features"] = f
        return out


def _ray_predict(
    model: nn.Module,
    pool: Pool,
    n: int,
    *,
    size: tuple[int, int],
    channels: int,
    want_features: bool,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("executor 'ray' needs Ray: pip install 'plada[ray]'") from exc
    if not ray.is_initialized():
        address = os.environ.get("PLADA_RAY_ADDRESS") or None  # None: start a local Ray on this machine
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the worker reports progress through its job, not a terminal
    ctx.print_on_execution_start = False
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    # each actor holds a CPU; leave one for Ray Data's own tasks (reading the id blocks), or it waits forever
    cpu_actors = max(1, min(int(os.environ.get("PLADA_RAY_ACTORS") or 2), int(resources.get("CPU", 2)) - 1))
    actors = gpus or cpu_actors
    ds = ray.data.range(n, override_num_blocks=max(1, -(-n // chunk))).map_batches(
        _PoolModelActor,
        fn_constructor_kwargs={
            "model": model.cpu().eval(),
            "pool_root": str(pool.root),
            "size": size,
            "channels": channels,
            "features": want_features,
        },
        batch_size=chunk,
        batch_format="numpy",
        concurrency=actors,
        num_gpus=1 if gpus else 0,
    )
    logits: np.ndarray | None = None
    feats: np.ndarray | None = None
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids: Any = b["id"]
        if logits is None:
            logits = np.empty((n, b["logits"].shape[1]), np.float32)
        logits[ids] = b["logits"]
        if "features" in b:
            if feats is None:
                feats = np.empty((n, b["features"].shape[1]), np.float16)
            feats[ids] = b["features"]
    assert logits is not None
    return logits, feats
