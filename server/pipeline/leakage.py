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

from plada.server.pipeline.blocks import LOCAL, Streaming, take
from plada.server.pipeline.scoring import nearest
from plada.shared.pool import ArrayPool, Pool, item_hash


@dataclass
class LeakageReport:
    exact: int  # target items whose bytes equal a pool item
    near: int  # further target items with a near-duplicate in the pool
    pool_indices: np.ndarray  # every flagged pool item (sorted, unique)
    examples: list[dict[str, Any]] = field(default_factory=list)
    method: str = ""
    nn_similarity: np.ndarray | None = None  # (n,) cosine of each upload image to its nearest pool item

    def as_metrics(self, excluded: bool) -> dict[str, Any]:
        return {
            "exact_duplicates": self.exact,
            "near_duplicates": self.near,
            "pool_items_flagged": len(self.pool_indices),
            "excluded": excluded,
            "method": self.method,
            "examples": self.examples[:5],
        }


MIN_COSINE = 0.995  # near duplicate without pixels to compare, where the index has no calibrated threshold


def compares_pixels(pool: Pool, x: np.ndarray) -> bool:
    """Whether the audit can compare the upload's pixels with pool items' (array pools, same shape): then it
    needs every upload image's nearest pool item, not only the ones above a cosine."""
    xs = x if x.ndim == 4 else x[..., None]
    return isinstance(pool, ArrayPool) and xs.shape[1:] == tuple(pool.image_shape) and xs.dtype == np.uint8


def _as_void(h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(h).view(np.dtype((np.void, h.shape[1])))[:, 0]


def audit_leakage(
    pool: Pool,
    x: np.ndarray,
    *,
    pool_features: np.ndarray | None,
    target_features: np.ndarray | None,
    max_pixel_diff: float = 0.02,
    min_cosine: float = MIN_COSINE,
    stream: Streaming = LOCAL,
    nearest_pool: tuple[np.ndarray, np.ndarray] | None = None,
) -> LeakageReport:
    """Flag pool items duplicating any of ``x`` (the publisher's images, all of them). ``nearest_pool``: each
    image's nearest pool item (similarities, indices; ``scoring.survey``'s), when a pass already found them."""
    n = len(x)
    flagged_pool: list[np.ndarray] = []
    exact_mask = np.zeros(n, dtype=bool)
    methods: list[str] = []
    examples: list[dict[str, Any]] = []
    xs = x if x.ndim == 4 else x[..., None]
    same_shape = compares_pixels(pool, x)
    if same_shape:
        methods.append("exact hash")
        th = np.frombuffer(b"".join(item_hash(np.ascontiguousarray(r).tobytes()) for r in xs), np.uint8)
        tv = _as_void(th.reshape(n, -1))
        pv = _as_void(pool.manifest.hashes)
        exact_mask = np.isin(tv, pv)
        if exact_mask.any():
            hit = np.flatnonzero(np.isin(pv, tv[exact_mask]))
            flagged_pool.append(hit)
            for t in np.flatnonzero(exact_mask)[:5]:  # pairs (upload image, pool item): a person can look at them
                i = int(np.flatnonzero(pv == tv[t])[0])
                examples.append(
                    {"pool_key": str(pool.manifest.keys[i]), "kind": "exact", "pool_index": i, "upload_index": int(t)}
                )
    near_mask = np.zeros(n, dtype=bool)
    nn_sim = None
    if pool_features is not None and target_features is not None and len(target_features) == n:
        sims, idx = nearest_pool or nearest(pool_features, target_features, k=1, stream=stream)
        nn_sim = sims[:, 0]
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
                examples.append(
                    {
                        "pool_key": str(pool.manifest.keys[nn_idx[i]]),
                        "kind": "near",
                        "pool_index": int(nn_idx[i]),
                        "upload_index": int(i),
                        "cosine": round(float(sims[i, 0]), 4),
                    }
                )
    pool_idx = np.unique(np.concatenate(flagged_pool)) if flagged_pool else np.zeros(0, dtype=np.int64)
    return LeakageReport(
        exact=int(exact_mask.sum()),
        near=int(near_mask.sum()),
        pool_indices=pool_idx.astype(np.int64),
        examples=examples,
        method="; ".join(methods) or "none (no comparable pixels or features)",
        nn_similarity=nn_sim,
    )


_SELF_SIMS: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
SELF_SAMPLE = 1000  # pool rows whose nearest other item describes the pool's own density


def self_sample(n: int, *, sample: int, seed: int) -> np.ndarray:
    """The sorted random pool rows ``nearest_other`` measures."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))


def own_similarity(rows: np.ndarray, sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """From each sampled row's two nearest pool items: the cosine to the nearest item other than itself."""
    return np.where(idx[:, 0] == rows, sims[:, 1], sims[:, 0])


def cached_self_sims(cache_key: str | None, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    return _SELF_SIMS.get((cache_key, sample, seed)) if cache_key is not None else None


def remember_self_sims(cache_key: str | None, sample: int, seed: int, rows: np.ndarray, own: np.ndarray) -> None:
    if cache_key is not None:
        _SELF_SIMS[(cache_key, sample, seed)] = (rows, own)


def nearest_other(
    pool_features: np.ndarray,
    *,
    sample: int,
    seed: int,
    cache_key: str | None = None,
    stream: Streaming = LOCAL,
) -> tuple[np.ndarray, np.ndarray]:
    """A sorted random sample of pool rows and each one's cosine to its nearest *other* pool item.

    A property of the pool's features alone: with ``cache_key`` (a feature index's id) it is computed once per
    process, not once per publish (on ImageNet-21K it is a search of the whole pool)."""
    hit = cached_self_sims(cache_key, sample, seed)
    if hit is not None:
        return hit
    rows = self_sample(len(pool_features), sample=sample, seed=seed)
    sims, idx = nearest(pool_features, take(pool_features, rows), k=2, stream=stream)
    own = own_similarity(rows, sims, idx)
    remember_self_sims(cache_key, sample, seed, rows, own)
    return rows, own


def domain_typicality(
    pool_features: np.ndarray,
    target_sims: np.ndarray,
    *,
    sample: int = SELF_SAMPLE,
    quantile: float = 0.05,
    seed: int = 0,
    cache_key: str | None = None,
    stream: Streaming = LOCAL,
    own: np.ndarray | None = None,
) -> dict[str, Any]:
    """How typical the upload looks *to the pool*: each upload image's cosine to its nearest pool item, against
    the same statistic of pool items among themselves (a sample, nearest other item). ``atypical_share`` is the
    share of upload images less similar to the pool than all but ``quantile`` of the pool's own items are —
    around ``quantile`` for a task drawn from the pool's domain, near 1 for one far outside it (textures
    against a pool of objects). A statistical test with generic constants, not a threshold fitted to tasks."""
    if own is None:  # (``own``: the pool's self-similarity sample, when a survey pass measured it already)
        _, own = nearest_other(pool_features, sample=sample, seed=seed, cache_key=cache_key, stream=stream)
    floor = float(np.quantile(own, quantile))
    return {
        "upload_nearest_pool_cosine_median": round(float(np.median(target_sims)), 4),
        "pool_nearest_pool_cosine_median": round(float(np.median(own)), 4),
        "pool_quantile": quantile,
        "pool_quantile_cosine": round(floor, 4),
        "atypical_share": round(float((target_sims < floor).mean()), 4),
    }


def copy_variants(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Edited copies a duplicate would arrive as: downscaled to 3/4 and back, JPEG re-encoded at quality 60,
    centre crop of 90 % of each side (resized back), and a slight brightness change."""
    import io

    from PIL import Image, ImageEnhance

    h, w = images.shape[1:3]
    out: dict[str, list[np.ndarray]] = {"resized-75%": [], "jpeg-q60": [], "crop-90%": [], "brightness+15%": []}
    for img in images:
        im = Image.fromarray(img if img.shape[-1] == 3 else img[..., 0])
        out["resized-75%"].append(np.asarray(im.resize((max(8, 3 * w // 4), max(8, 3 * h // 4))).resize((w, h))))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=60)
        out["jpeg-q60"].append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(im.mode)))
        dh, dw = h // 20, w // 20
        out["crop-90%"].append(np.asarray(im.crop((dw, dh, w - dw, h - dh)).resize((w, h))))
        out["brightness+15%"].append(np.asarray(ImageEnhance.Brightness(im).enhance(1.15)))
    return {k: np.stack(v).reshape(images.shape) for k, v in out.items()}


def calibrate_near_duplicates(
    pool: Pool,
    pool_features: np.ndarray,
    embed: Any,
    *,
    sample: int = 400,
    max_false_positive: float = 0.001,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose the cosine above which a pool item counts as a near duplicate, from the pool itself.

    Distinct images: ``sample`` pool items and their nearest *other* pool item (the pool's own near-duplicate
    rate is part of the false positives, so a pool full of duplicates gets a stricter threshold). Copies: the
    same items edited (``copy_variants``) and embedded with ``embed``; a copy is found when its nearest pool
    item is its original at or above the threshold. The threshold is the smallest cosine whose false-positive
    rate on the distinct pairs is at most ``max_false_positive``; recall is reported per edit."""
    rows, distinct = nearest_other(pool_features, sample=sample, seed=seed)
    threshold = float(np.quantile(distinct, 1.0 - max_false_positive, method="higher")) + 1e-4
    threshold = min(threshold, 0.999)
    variants = copy_variants(pool.batch(rows), seed=seed)
    recall: dict[str, float] = {}
    for name, imgs in variants.items():
        s, i = nearest(pool_features, embed(imgs), k=1)
        recall[name] = round(float(((i[:, 0] == rows) & (s[:, 0] >= threshold)).mean()), 4)
    return {
        "near_duplicate_cosine": round(threshold, 4),
        "distinct_pairs": len(rows),
        "distinct_cosine_p50_p99_max": [round(float(np.quantile(distinct, q)), 4) for q in (0.5, 0.99, 1.0)],
        "false_positive_rate": round(float((distinct >= threshold).mean()), 4),
        "recall": recall,
    }
