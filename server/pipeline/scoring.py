"""Per-item relevance scores from teacher logits. Convention: LOWER score = kept first."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from plada.server.pipeline import blocks


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


ROWS = 65_536  # logits are scored this many rows at a time: float64 copies stay ~0.5 GB even for 1,000 classes


def per_row(fn: Callable[[np.ndarray], np.ndarray], logits: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """``fn`` over row chunks of (possibly memory-mapped float16) logits; the pool's N × k never gets copied whole."""
    out: np.ndarray = np.empty(len(logits), dtype=dtype)
    for s in range(0, len(logits), ROWS):
        out[s : s + ROWS] = fn(blocks.rows(logits, s, s + ROWS, np.float64))
    return out


def labels(logits: np.ndarray) -> np.ndarray:
    """The teacher's hard label per item (argmax), chunk by chunk."""
    return per_row(lambda z: z.argmax(axis=1), logits, np.int64)


def energy(logits: np.ndarray) -> np.ndarray:
    """E(x) = −logsumexp(z) at temperature 1 (PLADA): low energy = in-distribution for the target."""
    return per_row(lambda z: -_logsumexp(z), logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Predictive entropy: low = the teacher is sure."""

    def rows(z: np.ndarray) -> np.ndarray:
        p = softmax(z)
        return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)

    return per_row(rows, logits)


def msp(logits: np.ndarray) -> np.ndarray:
    """Negative max softmax probability (so lower is more confident)."""
    return per_row(lambda z: -softmax(z).max(axis=1), logits)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def _top(sims: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row, best first (ties: lower column first)."""
    if sims.shape[1] > k:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        sims, idx = np.take_along_axis(sims, part, axis=1), np.take_along_axis(idx, part, axis=1)
    pos = np.lexsort((idx, -sims), axis=1) if sims.size else np.zeros_like(idx)
    return np.take_along_axis(sims, pos, axis=1), np.take_along_axis(idx, pos, axis=1)


def _search(d: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of unit rows ``q`` among unit rows ``d`` (one block of each). faiss (a server
    dependency) when importable, a chunked numpy product otherwise."""
    k = min(k, len(d))
    faiss: Any
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(d)
        sv, iv = index.search(q, k)
        return sv, iv.astype(np.int64)
    sims = np.empty((len(q), k), np.float32)
    idx = np.empty((len(q), k), np.int64)
    step = max(1, 2**27 // max(len(d), 1))  # bound the (queries × block) product to ~512 MB
    for s in range(0, len(q), step):
        prod = q[s : s + step] @ d.T
        sims[s : s + step], idx[s : s + step] = _top(prod, np.broadcast_to(np.arange(len(d)), prod.shape), k)
    return sims, idx


def _queries_block(block: np.ndarray, d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return _search(d, _unit(block), k)


def _db_block(block: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return _search(_unit(block), q, k)


def nearest(
    db: np.ndarray, queries: np.ndarray, *, k: int, stream: blocks.Streaming = blocks.LOCAL
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of each query row among ``db`` rows: (similarities, indices).

    Both sides stream in blocks (``stream``): a pool of 14.2M rows is never copied whole, whichever side it is
    on. A small ``db`` is searched by every block of queries; a large one block by block, each block's best
    ``k`` merged into the running best of each query.
    """
    k = max(1, min(k, len(db)))
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    if len(db) <= blocks.block_rows(db, stream.block_bytes):
        d = _unit(blocks.rows(db, 0, len(db)))
        for qs, (sv, iv) in stream.map(queries, blocks.block_fn(_queries_block, d, k)):
            sims[qs : qs + len(sv)], idx[qs : qs + len(sv)] = sv, iv
        return sims, idx
    for qs, qb in blocks.iter_rows(queries, stream.block_bytes):
        q = _unit(qb)
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        for ds, (sv, iv) in stream.map(db, blocks.block_fn(_db_block, q, k)):
            best_s, best_i = _top(np.concatenate([best_s, sv], 1), np.concatenate([best_i, iv + ds], 1), k)
        sims[qs : qs + len(q)], idx[qs : qs + len(q)] = best_s, best_i
    return sims, idx


def _knn_block(block: np.ndarray, d: np.ndarray, k: int) -> np.ndarray:
    return _search(d, _unit(block), k)[0].mean(axis=1)


def knn_similarity(
    pool_f: np.ndarray, target_f: np.ndarray, *, k: int = 5, stream: blocks.Streaming = blocks.LOCAL
) -> np.ndarray:
    """Mean cosine similarity of each pool item to its ``k`` nearest target items (exact search), block by
    block over the pool (only the mean leaves a block)."""
    d = _unit(np.asarray(target_f, dtype=np.float32))
    k = max(1, min(k, len(d)))
    out = np.empty(len(pool_f), dtype=np.float32)
    for s, m in stream.map(pool_f, blocks.block_fn(_knn_block, d, k)):
        out[s : s + len(m)] = m
    return out


@dataclass
class Survey:
    """What one pass over the pool's features measures against the upload's rows and a sample of pool rows:
    every pool item's mean cosine to its ``knn_k`` nearest training uploads (the ``knn`` selector), every
    upload's nearest pool item (the leakage audit) and every sampled pool row's nearest *other* pool item (the
    pool's own typicality)."""

    knn: np.ndarray  # (N,) float32
    knn_k: int
    near_sims: np.ndarray  # (uploads,) cosine to the nearest pool item
    near_idx: np.ndarray  # (uploads,) its row, where near_sims >= index_above (else -1)
    own: np.ndarray  # (sampled rows,) cosine to the nearest other pool item


def _survey_block(
    block: np.ndarray,
    start: int,
    qt: np.ndarray,
    n_knn: int,
    k: int,
    self_rows: np.ndarray,
    n_up: int,
    index_above: float,
    product_bytes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pool block against every query column: kNN scores (over the first ``n_knn`` columns) and each
    column's best value, with its row where it is at least ``index_above`` (upload columns; the sampled pool
    rows, the last columns, skip themselves). The product is taken ``product_bytes`` at a time. Column maxima
    are fast in numpy, column argmaxes are not: rows are only looked for where they are needed."""
    u = _unit(block)
    step = max(256, product_bytes // (4 * qt.shape[1]))
    knn = np.empty(len(u), np.float32)
    best = np.full(qt.shape[1], -np.inf, np.float32)
    where = np.full(qt.shape[1], -1, np.int64)
    self_cols = n_up + np.arange(len(self_rows))
    for s in range(0, len(u), step):
        prod = u[s : s + step] @ qt  # (rows, queries)
        knn[s : s + len(prod)] = _mean_top(prod[:, :n_knn], k)
        lo, hi = start + s, start + s + len(prod)
        inside = (self_rows >= lo) & (self_rows < hi)
        prod[self_rows[inside] - lo, self_cols[inside]] = -np.inf  # a sampled row is not its own neighbour
        m = prod.max(axis=0)
        better = np.flatnonzero(m > best)
        best[better] = m[better]
        look = better[(better < n_up) & (m[better] >= index_above)]
        if len(look):
            r, c = np.nonzero(prod[:, look] == m[look])
            uc, first = np.unique(c, return_index=True)
            where[look[uc]] = start + s + r[first]
    return knn, best, where


def _mean_top(prod: np.ndarray, k: int) -> np.ndarray:
    """Mean of each row's ``k`` largest values: the kNN score, computed alike wherever it is computed."""
    import torch

    return torch.from_numpy(prod).topk(k, dim=1).values.mean(1).numpy()


def knn_of_rows(
    pool_f: np.ndarray, rows: np.ndarray, target_f: np.ndarray, *, k: int, block_bytes: int = blocks.BLOCK_BYTES
) -> np.ndarray:
    """``survey``'s kNN score for the pool ``rows`` only (any order), on rows gathered a block at a time: a
    compressed index's survey ranks the pool on its projected rows, and the items a selection could reach are
    scored again on their full-width rows."""
    rows = np.asarray(rows, dtype=np.int64)
    qt = np.ascontiguousarray(_unit(target_f).T)
    k = max(1, min(k, qt.shape[1]))
    order = np.argsort(rows, kind="stable")
    out = np.empty(len(rows), np.float32)
    step = max(256, block_bytes // (4 * qt.shape[1]))  # the product is bounded like a block, as in the survey
    for s, block in blocks.iter_take(pool_f, rows[order], block_bytes):
        u = _unit(block)
        for t in range(0, len(u), step):
            part = u[t : t + step]
            out[order[s + t : s + t + len(part)]] = _mean_top(part @ qt, k)
    return out


def survey(
    pool_f: np.ndarray,
    uploads: np.ndarray,
    *,
    knn_cols: np.ndarray,
    self_rows: np.ndarray,
    k: int = 5,
    index_above: float = -np.inf,
    stream: blocks.Streaming = blocks.LOCAL,
) -> Survey:
    """One block-by-block pass instead of three (``knn_similarity`` over the uploads ``knn_cols``, ``nearest``
    for every upload, ``leakage.nearest_other`` for the pool rows ``self_rows``), each giving what its own exact
    search gives. On ImageNet-21K a pass is minutes of matrix products; the three share one."""
    knn_cols = np.asarray(knn_cols, dtype=np.int64)
    self_rows = np.asarray(self_rows, dtype=np.int64)
    n_up = len(uploads)
    rest = np.setdiff1d(np.arange(n_up), knn_cols)
    order = np.concatenate([knn_cols, rest])  # the kNN columns first: a contiguous slice of each product
    q = np.concatenate([np.asarray(uploads, dtype=np.float32)[order], blocks.take(pool_f, self_rows)])
    qt = np.ascontiguousarray(_unit(q).T)
    k = max(1, min(k, len(knn_cols)))
    knn = np.empty(len(pool_f), dtype=np.float32)
    best = np.full(qt.shape[1], -np.inf, np.float32)
    where = np.full(qt.shape[1], -1, np.int64)
    fn = functools.partial(  # the product of a block with the queries is bounded like a block
        _survey_block,
        qt=qt,
        n_knn=len(knn_cols),
        k=k,
        self_rows=self_rows,
        n_up=n_up,
        index_above=index_above,
        product_bytes=stream.block_bytes,
    )
    for s, (m, b, w) in stream.map(pool_f, _with_start(fn)):
        knn[s : s + len(m)] = m
        better = b > best
        best[better], where[better] = b[better], w[better]
    near_s, near_i = np.empty(n_up, np.float32), np.empty(n_up, np.int64)
    near_s[order], near_i[order] = best[:n_up], where[:n_up]
    return Survey(knn=knn, knn_k=k, near_sims=near_s, near_idx=near_i, own=best[n_up:])


def _with_start(fn: Callable[..., Any]) -> Callable[[int, np.ndarray], Any]:
    return functools.partial(_start_first, fn)


def _start_first(fn: Callable[..., Any], start: int, block: np.ndarray) -> Any:
    return fn(block, start)


def _affine(block: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return block @ w + b


def domain_logit(
    pool_f: np.ndarray,
    target_f: np.ndarray,
    *,
    negatives: int = 20_000,
    steps: int = 300,
    seed: int = 0,
    stream: blocks.Streaming = blocks.LOCAL,
) -> np.ndarray:
    """log p(target|x) − log p(pool|x) from a class-balanced logistic regression on standardised features,
    fitted on the target items against a random pool sample; higher = more like the target domain."""
    import torch

    rng = np.random.default_rng(seed)
    neg = rng.choice(len(pool_f), size=min(negatives, len(pool_f)), replace=False)
    xn = blocks.take(pool_f, np.sort(neg))
    xp = np.asarray(target_f, dtype=np.float32)
    mu, sd = xn.mean(0), xn.std(0) + 1e-6
    x_np = np.concatenate([xp, xn])
    x_np -= mu  # in place: one copy of the sample, not three
    x_np /= sd
    x = torch.from_numpy(x_np)
    y = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))])
    w = torch.cat([torch.full((len(xp),), 0.5 / len(xp)), torch.full((len(xn),), 0.5 / len(xn))])
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = lin(x)[:, 0]
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
        loss = loss + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    # the fitted line folded into one affine map of the raw rows: z = (x − μ)/σ · w + b = x · (w/σ) + b'
    w = lin.weight.detach().numpy()[0].astype(np.float64)
    wf = (w / sd).astype(np.float32)
    bf = float(lin.bias.detach().numpy()[0] - (mu / sd) @ w)
    out = np.empty(len(pool_f), dtype=np.float32)
    for s, z in stream.map(pool_f, blocks.block_fn(_affine, wf, bf)):
        out[s : s + len(z)] = z
    return out
