"""A compressed feature index: the pool's pretrained features projected to ``dim`` dimensions, stored as int8.

ImageNet-21K's 14.2M items at 1,280 float16 dimensions are 36 GB; at 256 int8 dimensions 3.6 GB, which a
server keeps in its page cache. The projection is the top ``dim`` right singular vectors of a sample of the
rows, *uncentred* (the best rank-``dim`` approximation of the rows themselves, so inner products and cosines
survive, the mean direction included); one global scale maps the projected rows to int8 (a global scale changes
no cosine and no standardised probe, so every consumer reads the int8 rows as they are).

What the compression costs is measured, not assumed (``bench/photo.py --index``, docs/benchmarks.md). The
pool-wide passes that compare items (the survey's kNN scores and leakage search, the domain check) read the
projected rows, the upload projected the same way. The *linear* passes (teacher logits, the domain classifier,
the probe proxies) read the full-width source while it is kept on disk (``FeatureIndex.full``: streamed once or
twice a publish, gathered for the proxies): a probe standardises its inputs, so the low-variance directions a
projection drops weigh as much as the rest, and on the projected rows alone the photo world's students lose
1–3 points. With the source kept, what a selection decides on is read from it too, by gathers of a few × the
keep: the kNN items a keep could reach are scored again on their full rows, and the diversity strata are the
full rows' (``records.Prepared``), so every candidate selects what it selects on the full index. Without the
source the teacher, fitted on the upload's full features, is lifted onto the stored rows
(``FeatureIndex.lift``) and everything else reads them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from plada.server.pipeline import blocks
from plada.server.pipeline.features import DEFAULT_INDEX, FeatureIndex, index_dir, open_feature_index, write_index
from plada.shared.errors import PoolError
from plada.shared.files import atomic_write_bytes
from plada.shared.pool import Pool

DEFAULT_DIM = 256
SAMPLE = 100_000  # rows the projection is fitted on
CLIP_QUANTILE = 0.9999  # of |projected values|: the int8 range; the rare larger values saturate


def fit_projection(sample: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    """(P, explained): the top ``dim`` right singular vectors (D, dim) of the uncentred sample and the share
    of the sample's squared norm they keep."""
    x = np.asarray(sample, dtype=np.float32)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    energy = s.astype(np.float64) ** 2
    return np.ascontiguousarray(vt[:dim].T), float(energy[:dim].sum() / max(energy.sum(), 1e-30))


def quantise(z: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(z / scale), -127, 127).astype(np.int8)


def compress_index(
    pool: Pool,
    source: str = DEFAULT_INDEX,
    name: str | None = None,
    *,
    dim: int = DEFAULT_DIM,
    sample: int = SAMPLE,
    seed: int = 0,
    calibrate: bool = True,
    block_bytes: int = blocks.BLOCK_BYTES,
    progress: Callable[[float, str], None] | None = None,
) -> FeatureIndex:
    """Write index ``name`` (default ``<source>-pca<dim>``): ``source`` projected to ``dim`` int8 columns, read
    and written a block at a time (the source is never in RAM). With ``calibrate`` and readable pool pixels,
    the leakage audit's near-duplicate cosine is chosen again for the new space, as ``pool embed`` does."""
    report = progress or (lambda _f, _m: None)
    src = open_feature_index(pool, source)
    if src is None:
        raise PoolError(f"pool {pool.name} has no feature index {source!r}: run 'plada-server pool embed' first")
    if src.compressed:
        raise PoolError(f"feature index {source!r} is already compressed ({src.dim} int8 columns)")
    if not 1 <= dim < src.dim:
        raise PoolError(f"--dim must be between 1 and {src.dim - 1} (the index has {src.dim} columns)")
    name = name or f"{source}-pca{dim}"
    t0 = time.perf_counter()
    n = len(src.features)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    report(0.0, f"fitting the projection on {len(rows):,} rows")
    fit = blocks.take(src.features, rows)
    proj, explained = fit_projection(fit, dim)
    scale = float(np.quantile(np.abs(fit @ proj), CLIP_QUANTILE)) / 127.0 or 1.0
    del fit
    out = blocks.spill((n, dim), np.int8, src.root.parent)
    for s, block in blocks.iter_rows(src.features, block_bytes):
        out[s : s + len(block)] = quantise(block @ proj, scale)
        blocks.release(out[s : s + len(block)])
        report((s + len(block)) / n, f"compressing: {s + len(block):,}/{n:,}")
    info: dict[str, Any] = {
        **{k: v for k, v in src.info.items() if k not in ("near_duplicates", "seconds")},
        "name": name,
        "dim": dim,
        "compression": {
            "kind": "svd-int8",
            "from": source,
            "from_dim": src.dim,
            "scale": scale,
            "sample": len(rows),
            "explained": round(explained, 4),
            "clip_quantile": CLIP_QUANTILE,
        },
        "seconds": {"compress": round(time.perf_counter() - t0, 1)},
    }
    weights = (src.root / "backbone.pt").read_bytes()
    index = write_index(pool, name, [out], weights, info, extra={"projection": proj})
    del out
    if calibrate and src.pretrained and src.info.get("near_duplicates") and _readable(pool):
        import torch

        from plada.server.pipeline.leakage import calibrate_near_duplicates

        report(1.0, "calibrating the near-duplicate threshold")
        t1 = time.perf_counter()
        info["near_duplicates"] = calibrate_near_duplicates(
            pool, index.features, lambda imgs: index.embed(imgs, device=torch.device("cpu"))
        )
        info["seconds"]["calibrate"] = round(time.perf_counter() - t1, 1)
        atomic_write_bytes(index.root / "index.json", json.dumps(info, indent=2).encode())
        index.info = info
    return index


def _readable(pool: Pool) -> bool:
    try:
        pool.batch(np.array([0]))
    except Exception:
        return False
    return True


def replace_with(pool: Pool, compressed: str, *, keep_as: str) -> None:
    """Make ``compressed`` the pool's ``default`` index; the old default is kept as ``keep_as``."""
    d, new = index_dir(pool, DEFAULT_INDEX), index_dir(pool, compressed)
    if index_dir(pool, keep_as).exists():
        raise PoolError(f"feature index {keep_as!r} exists already; remove it or choose another --keep-as")
    if d.exists():
        os.replace(d, index_dir(pool, keep_as))
        _rename(index_dir(pool, keep_as), keep_as)
    os.replace(new, d)
    info = _rename(d, DEFAULT_INDEX)
    if info["compression"].get("from") == DEFAULT_INDEX:
        info["compression"]["from"] = keep_as  # the linear passes follow their full-width rows to the new name
        atomic_write_bytes(d / "index.json", json.dumps(info, indent=2).encode())


def _rename(root: Path, name: str) -> dict[str, Any]:
    """An index folder's ``index.json`` says its name (what metrics and ``pool`` commands show)."""
    info: dict[str, Any] = json.loads((root / "index.json").read_text())
    info["name"] = name
    atomic_write_bytes(root / "index.json", json.dumps(info, indent=2).encode())
    return info
