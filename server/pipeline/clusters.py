"""A coding order for a pool, computed once: items grouped by embedding cluster.

Payload indices cluster in embedding space (a task keeps items that look alike), so coding them in cluster
order makes gaps short and labels repetitive. Without a backbone the embedding is PCA of the pixels; a pool
with cached backbone features would cluster those instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from plada.server.pipeline import blocks
from plada.shared.pool import Pool


def pixel_clusters(
    pool: Pool,
    *,
    k: int = 64,
    dims: int = 32,
    seed: int = 0,
    chunk: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Cluster id per item: PCA(dims) of downscaled pixels, then mini-batch k-means with k clusters."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA

    n = len(pool)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}")

    def rows(start: int) -> np.ndarray:
        x = pool.batch(np.arange(start, min(start + chunk, n))).astype(np.float32) / 255.0
        return x.reshape(len(x), -1)

    pca = IncrementalPCA(n_components=min(dims, rows(0).shape[1]))
    for s in range(0, n, chunk):
        block = rows(s)
        if len(block) >= pca.n_components:
            pca.partial_fit(block)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    z = np.concatenate([pca.transform(rows(s)) for s in range(0, n, chunk)])
    labels = km.fit_predict(z)
    if progress:
        progress(n, n)
    return labels.astype(np.int32)


def feature_strata(
    features: np.ndarray,
    *,
    k: int = 64,
    sample: int = 20_000,
    iters: int = 15,
    seed: int = 0,
    stream: blocks.Streaming = blocks.LOCAL,
) -> np.ndarray:
    """k-means cluster id per row of ``features`` (cosine geometry), fitted on a sample: the strata that the
    diversity option spreads picks over. Plain numpy so it runs wherever the pool features do."""
    centers = strata_centers(features, k=k, sample=sample, iters=iters, seed=seed)
    out = np.empty(len(features), dtype=np.int32)
    for s, a in stream.map(features, blocks.block_fn(_assign, centers)):
        out[s : s + len(a)] = a
    return out


def strata_centers(
    features: np.ndarray, *, k: int = 64, sample: int = 20_000, iters: int = 15, seed: int = 0
) -> np.ndarray:
    """The (k, D) unit centres ``feature_strata`` assigns rows to, fitted on a sample of ``sample`` rows."""
    n = len(features)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    z = _unit(blocks.take(features, np.sort(rng.choice(n, size=min(sample, n), replace=False))))
    centers = z[rng.choice(len(z), size=k, replace=False)]
    for _ in range(iters):
        assign = np.argmax(z @ centers.T, axis=1)
        for j in range(k):
            members = z[assign == j]
            centers[j] = members.mean(0) if len(members) else z[rng.integers(len(z))]
        centers = _unit(centers)
    return centers


def assign_strata(
    features: np.ndarray, rows: np.ndarray, centers: np.ndarray, *, block_bytes: int = blocks.BLOCK_BYTES
) -> np.ndarray:
    """The strata of ``rows`` only, gathered a block at a time: a diverse selection reads the strata of its
    best few × B items, not of the whole pool (at ImageNet-21K a gather of ~400,000 rows instead of a pass)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = np.empty(len(rows), dtype=np.int32)
    for s, block in blocks.iter_take(features, rows[order], block_bytes):
        out[order[s : s + len(block)]] = _assign(block, centers)
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)


def _assign(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return np.argmax(_unit(block) @ centers.T, axis=1).astype(np.int32)
