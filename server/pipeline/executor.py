"""Where a model runs over the whole pool: in this process (``local``, the default) or on a Ray cluster.

The pool pass (teacher scoring, feature indexing) is the one step whose cost grows with the pool: 14.2M
images for ImageNet-21K. ``local`` decodes in DataLoader workers beside one device. ``ray`` runs the same
model as a Ray Data pipeline: the item ids are the dataset, ``map_batches`` hands chunks of ids to stateful
actors (one per GPU, or ``ray_actors`` CPU actors), each of which opens the pool once, decodes its chunk and
runs the model. Results come back by id, so the output is the local executor's, item for item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from plada.server.pipeline import blocks
from plada.server.pipeline.config import RunConfig
from plada.shared import nn as pnn
from plada.shared.pool import Pool, open_pool


def predict_pool(
    model: nn.Module,
    pool: Pool,
    *,
    size: tuple[int, int],
    channels: int,
    config: RunConfig,
    want_features: bool,
    n: int | None = None,
    start: int = 0,
    chunk: int = 2048,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and features) of ``model`` on pool items ``start`` … ``n`` − 1 (default: all), in pool order,
    on ``config.device`` here or on the Ray cluster ``config`` names."""
    n = len(pool) if n is None else n
    if config.executor == "ray":
        return _ray_predict(
            model, pool, n, config, start=start, size=size, channels=channels, want_features=want_features, chunk=chunk
        )
    out = _Outputs(n - start, config)
    done = 0
    device = config.device
    for xb in pnn.pool_batches(pool, device=device, chunk=chunk, start=start, stop=n, workers=workers):
        z, f = pnn.predict(model, [xb], size=size, channels=channels, device=device, want_features=want_features)
        out.put(np.arange(done, done + len(z)), z, f)
        done += len(z)
        if progress:
            progress(len(z))
    return out.result()


class _Outputs:
    """Pool-sized outputs filled by item id: logits in RAM (float32) or, past ``config.logits_ram_bytes``
    (ImageNet-21K × 100 classes would need 5.7 GB), spilled to a float16 memory map; features float16."""

    def __init__(self, n: int, config: RunConfig) -> None:
        self.n, self.config = n, config
        self.logits: np.ndarray | None = None
        self.features: np.ndarray | None = None

    def put(self, ids: np.ndarray, z: np.ndarray, f: np.ndarray | None) -> None:
        if self.logits is None:
            c = self.config
            self.logits = blocks.logits_array(self.n, z.shape[1], c.logits_ram_bytes, c.scratch_dir)
        self.logits[ids] = z
        if f is not None:
            if self.features is None:
                self.features = np.empty((self.n, f.shape[1]), np.float16)
            self.features[ids] = f

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.logits is None:
            return np.zeros((0, 0), np.float32), None
        return self.logits, self.features


class _PoolModelActor:
    """One per GPU (or CPU slot): loads the pool and the model once, then scores chunks of item ids."""

    def __init__(
        self, model: nn.Module, pool_root: str, size: tuple[int, int], channels: int, features: bool, offset: int = 0
    ) -> None:
        pnn.set_threads()
        self.device = pnn.pick_device("auto")
        self.model, self.pool = model, open_pool(pool_root)
        self.size, self.channels, self.features, self.offset = size, channels, features, offset

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["id"], dtype=np.int64)
        z, f = pnn.predict(
            self.model,
            [self.pool.batch(ids + self.offset)],
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
    config: RunConfig,
    *,
    start: int = 0,
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
        address = config.ray_address or None  # None: start a local Ray on this machine
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the worker reports progress through its job, not a terminal
    ctx.print_on_execution_start = False
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    # each actor holds a CPU; leave one for Ray Data's own tasks (reading the id blocks), or it waits forever
    cpu_actors = max(1, min(config.ray_actors, int(resources.get("CPU", 2)) - 1))
    actors = gpus or cpu_actors
    m = n - start  # ids are 0 … m − 1 in the dataset; actors add the offset
    ds = ray.data.range(m, override_num_blocks=max(1, -(-m // chunk))).map_batches(
        _PoolModelActor,
        fn_constructor_kwargs={
            "model": model.cpu().eval(),
            "pool_root": str(pool.root),
            "size": size,
            "channels": channels,
            "features": want_features,
            "offset": start,
        },
        batch_size=chunk,
        batch_format="numpy",
        concurrency=actors,
        num_gpus=1 if gpus else 0,
    )
    out = _Outputs(m, config)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids: Any = b["id"]
        out.put(ids, b["logits"], b.get("features"))
    return out.result()
