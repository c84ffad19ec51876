"""Synthetic pools at the paper's scale: a pool folder and a feature index, no images.

No 14.2M-image pool exists on a development machine (and none may be downloaded), so the scale bench and
its small test publish on a *synthetic* one: ``n`` keys in ``n_groups`` folders named like ImageNet-21K's
synsets (``n01440764/n01440764_17.JPEG``), random item hashes and fingerprints (the definition's sizes are
real), and a feature index drawn to resemble a real one: each synthetic group's mean is a real group's mean
moved by half a real within-group residual, and each item adds a real item's within-group residual to it, so
group spread, between-group distances and the shape of the distribution are the real index's. The pool's
pixels are not there: the pool is scored from its index only, as a server with a cached index does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from plada.server.pipeline import blocks
from plada.server.pipeline.features import INDEX_DIR
from plada.shared.pool import KeyTable, Pool, PoolManifest, open_pool
from plada.shared.pool.definition import FINGERPRINTS_FILE
from plada.shared.pool.fingerprint import FINGERPRINT_BYTES
from plada.shared.pool.manifest import ITEM_HASH_BYTES, POOL_FORMAT, POOL_FORMAT_VERSION

IMAGENET21K_GROUPS = 21_841
IMAGENET21K_ITEMS = 14_197_122


def wnids(n_groups: int, seed: int = 0) -> list[str]:
    """``n_groups`` distinct synset-like folder names (``n`` and 8 digits, sorted, as ImageNet's)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1_000_000, 15_000_000), size=n_groups, replace=False))
    return [f"n{int(i):08d}" for i in ids]


def _keys(names: list[str], sizes: np.ndarray) -> KeyTable:
    parts = []
    for name, size in zip(names, sizes, strict=True):
        parts.append("\n".join(f"{name}/{name}_{i}.JPEG" for i in range(int(size))).encode())
    return KeyTable(b"\n".join(parts))


def synthetic_pool(
    out: Path,
    n: int,
    n_groups: int,
    *,
    source_rows: np.ndarray,
    source_groups: np.ndarray,
    index_info: dict[str, Any],
    backbone: Path,
    projection: np.ndarray | None = None,
    full_rows: np.ndarray | None = None,
    name: str = "synthetic",
    seed: int = 0,
    block: int = 1 << 16,
) -> Pool:
    """Write pool ``out`` (``n`` items, ``n_groups`` folders) with a ``default`` feature index whose rows are
    drawn from ``source_rows`` (a real index's rows, in its stored dtype, grouped by ``source_groups``).
    ``index_info`` is the real index's ``index.json`` (backbone, input size, compression); ``backbone`` its
    weights file; ``projection`` its projection when it is compressed. With ``full_rows`` (the full-width rows
    the compressed ``source_rows`` were made from, same order) the rows are drawn full-width and kept as index
    ``full`` (float16), and ``default`` holds their compression, as ``pool compress`` would have made it: the
    two tiers of a compressed pool. Rows are written a block at a time."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = wnids(n_groups, seed)
    sizes = np.full(n_groups, n // n_groups, dtype=np.int64)
    sizes[rng.choice(n_groups, size=n - int(sizes.sum()), replace=False)] += 1
    groups = np.repeat(np.arange(n_groups, dtype=np.int32), sizes)
    hashes = rng.integers(0, 256, size=(n, ITEM_HASH_BYTES), dtype=np.uint8)
    manifest = PoolManifest(name=name, keys=_keys(names, sizes), hashes=hashes, groups=groups)
    manifest.save(out / "manifest.npz")
    np.save(out / FINGERPRINTS_FILE, rng.integers(0, 256, size=(n, FINGERPRINT_BYTES), dtype=np.uint8))
    dtype = source_rows.dtype
    two_tier = full_rows is not None and projection is not None
    scale = float(index_info["compression"]["scale"]) if two_tier else 1.0
    src = np.asarray(full_rows if two_tier else source_rows, dtype=np.float32)
    _, src_g = np.unique(source_groups, return_inverse=True)
    means = np.stack([src[src_g == g].mean(0) for g in range(int(src_g.max()) + 1)])
    resid = src - means[src_g]
    base = rng.integers(0, len(means), size=n_groups)
    centres = means[base] + 0.5 * resid[rng.integers(0, len(resid), size=n_groups)]
    idir, fdir = out / INDEX_DIR / "default", out / INDEX_DIR / "full"
    for d in (idir, fdir):
        shutil.rmtree(d, ignore_errors=True)
    idir.mkdir(parents=True)
    dim = projection.shape[1] if two_tier and projection is not None else src.shape[1]
    feats = np.lib.format.open_memmap(idir / "features.npy", mode="w+", dtype=dtype, shape=(n, dim))
    full = None
    if two_tier:
        fdir.mkdir(parents=True)
        full = np.lib.format.open_memmap(fdir / "features.npy", mode="w+", dtype=np.float16, shape=(n, src.shape[1]))
    for s in range(0, n, block):
        g = groups[s : s + block]
        rows = centres[g] + resid[rng.integers(0, len(resid), size=len(g))]
        if full is not None and projection is not None:
            full[s : s + len(g)] = rows.astype(np.float16)
            blocks.release(full[s : s + len(g)])
            rows = (rows.astype(np.float16).astype(np.float32) @ projection) / np.float32(scale)
        if dtype == np.int8:
            rows = np.clip(np.rint(rows), -127, 127)
        feats[s : s + len(g)] = rows.astype(dtype)
        blocks.release(feats[s : s + len(g)])
    feats.flush()
    del feats
    common = {
        **{k: v for k, v in index_info.items() if k not in ("seconds", "images_per_s", "resumed_items")},
        "pool_id": manifest.pool_id,
        "n_items": n,
        "synthetic": {"from": index_info.get("pool_id"), "groups": n_groups, "seed": seed},
    }
    shutil.copyfile(backbone, idir / "backbone.pt")
    if projection is not None:
        np.save(idir / "projection.npy", projection)
    info = {**common, "name": "default"}
    if full is not None:
        full.flush()
        del full
        shutil.copyfile(backbone, fdir / "backbone.pt")
        full_info = {k: v for k, v in common.items() if k not in ("compression", "near_duplicates")}
        (fdir / "index.json").write_text(json.dumps({**full_info, "name": "full", "dim": int(src.shape[1])}, indent=2))
        info["compression"] = {**info["compression"], "from": "full"}
    (idir / "index.json").write_text(json.dumps(info, indent=2))
    pool_info = {
        "format": POOL_FORMAT,
        "format_version": POOL_FORMAT_VERSION,
        "name": name,
        "pool_id": manifest.pool_id,
        "n_items": n,
        "kind": "folder",
        "source": str(out / "images-not-here"),  # synthetic: no pixels, scored from the index only
        "image_shape": [64, 64, 3],
        "group_names": names,
    }
    (out / "pool.json").write_text(json.dumps(pool_info, indent=2))
    return open_pool(out)
