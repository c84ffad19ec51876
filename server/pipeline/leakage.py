"""Leakage audit: which pool items duplicate, or nearly duplicate, the publisher's own images?

A pool item that *is* a target image turns "the student learned the task" into "the student saw the test
answer", whenever the publisher's data and the client's test data overlap (the same photo crawled twice).
The audit finds them before publishing and reports counts in the version's metrics; with
``exclude_duplicates`` they are never selected.

- exact: the target image's canonical bytes hash (BLAKE2b-128) equals a pool item's manifest hash. Only
  meaningful for array pools (whose items are pixel arrays); folder pools hash file bytes.
- near: the pool item nearest in feature space (cosine) is also close in pixels (mean absolute difference
  ≤ ``max_pixel_diff`` of the full range), or — when pixels cannot be compared — has cosine ≥ ``min_cosine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plada.server.pipeline.scoring import nearest
from plada.shared.pool import ArrayPool, Pool, item_hash


@dataclass
class LeakageReport:
    exact: int  # target items whose bytes equal a pool item
    near: int  # further target items with a near-duplicate in the pool
    pool_indices: np.ndarray  # every flagged pool item (sorted, unique)
    examples: list[dict[str, Any]] = field(default_factory=list)
    method: str = ""

    def as_metrics(self, excluded: bool) -> dict[str, Any]:
        return {
            "exact_duplicates": self.exact,
            "near_duplicates": self.near,
            "pool_items_flagged": len(self.pool_indices),
            "excluded": excluded,
            "method": self.method,
            "examples": self.examples[:5],
        }


def _as_void(h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(h).view(np.dtype((np.void, h.shape[1])))[:, 0]


def audit_leakage(
    pool: Pool,
    x: np.ndarray,
    *,
    pool_features: np.ndarray | None,
    target_features: np.ndarray | None,
    max_pixel_diff: float = 0.02,
    min_cosine: float = 0.995,
) -> LeakageReport:
    """Flag pool items duplicating any of ``x`` (the publisher's images, all of them)."""
    n = len(x)
    flagged_pool: list[np.ndarray] = []
    exact_mask = np.zeros(n, dtype=bool)
    methods: list[str] = []
    examples: list[dict[str, Any]] = []
    h, w, c = pool.image_shape
    xs = x if x.ndim == 4 else x[..., None]
    same_shape = isinstance(pool, ArrayPool) and xs.shape[1:] == (h, w, c) and xs.dtype == np.uint8
    if same_shape:
        methods.append("exact hash")
        th = np.frombuffer(b"".join(item_hash(np.ascontiguousarray(r).tobytes()) for r in xs), np.uint8)
        tv = _as_void(th.reshape(n, -1))
        pv = _as_void(pool.manifest.hashes)
        exact_mask = np.isin(tv, pv)
        if exact_mask.any():
            hit = np.flatnonzero(np.isin(pv, tv[exact_mask]))
            flagged_pool.append(hit)
            for i in hit[:5]:
                examples.append({"pool_key": str(pool.manifest.keys[i]), "kind": "exact"})
    near_mask = np.zeros(n, dtype=bool)
    if pool_features is not None and target_features is not None and len(target_features) == n:
        sims, idx = nearest(pool_features, target_features, k=1)
        nn_idx = idx[:, 0]
        if same_shape:
            methods.append(f"feature neighbour with pixel difference ≤ {max_pixel_diff:g}")
            diff = np.empty(n, dtype=np.float64)
            for s in range(0, n, 4096):
                a = xs[s : s + 4096].astype(np.float32)
                b = pool.batch(nn_idx[s : s + 4096]).astype(np.float32)
                diff[s : s + len(a)] = np.abs(a - b).reshape(len(a), -1).mean(1) / 255.0
            near_mask = (diff <= max_pixel_diff) & ~exact_mask
        else:
            methods.append(f"feature neighbour with cosine ≥ {min_cosine:g}")
            near_mask = (sims[:, 0] >= min_cosine) & ~exact_mask
        if near_mask.any():
            flagged_pool.append(nn_idx[near_mask])
            for i in np.flatnonzero(near_mask)[:5]:
                examples.append({"pool_key": str(pool.manifest.keys[nn_idx[i]]), "kind": "near"})
    pool_idx = np.unique(np.concatenate(flagged_pool)) if flagged_pool else np.zeros(0, dtype=np.int64)
    return LeakageReport(
        exact=int(exact_mask.sum()),
        near=int(near_mask.sum()),
        pool_indices=pool_idx.astype(np.int64),
        examples=examples,
        method="; ".join(methods) or "none (no comparable pixels or features)",
    )
