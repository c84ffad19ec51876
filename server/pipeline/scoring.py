"""Per-item relevance scores from teacher logits. Convention: LOWER score = kept first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


ROWS = 65_536  # logits are scored this many rows at a time: float64 copies stay ~0.5 GB even for 1,000 classes


def per_row(fn: Callable[[np.ndarray], np.ndarray], logits: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """``fn`` over row chunks of (possibly memory-mapped float16) logits; the pool's N × k never gets copied whole."""
    out: np.ndarray = np.empty(len(logits), dtype=dtype)
    for s in range(0, len(logits), ROWS):
        out[s : s + ROWS] = fn(np.asarray(logits[s : s + ROWS], dtype=np.float64))
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


def nearest(db: np.ndarray, queries: np.ndarray, *, k: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of each query row among ``db`` rows: (similarities, indices).

    faiss (a server dependency) does the search when importable; a chunked numpy product is the fallback.
    """
    d = _unit(db)
    k = max(1, min(k, len(d)))
    faiss: Any
    try:
        import faiss
    except ImportError:
        faiss = None
    index = None
    if faiss is not None:
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(d)
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    if index is None:  # bound the (chunk × len(db)) product to ~512 MB
        chunk = max(1, min(chunk, 2**27 // max(len(d), 1)))
    for s in range(0, len(queries), chunk):
        q = _unit(queries[s : s + chunk])
        if index is not None:
            sv, iv = index.search(q, k)
        else:
            prod = q @ d.T
            part = np.argpartition(-prod, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(prod, part, axis=1)
            pos = np.argsort(-top, axis=1, kind="stable")
            iv = np.take_along_axis(part, pos, axis=1)
            sv = np.take_along_axis(top, pos, axis=1)
        sims[s : s + len(q)], idx[s : s + len(q)] = sv, iv
    return sims, idx


def knn_similarity(pool_f: np.ndarray, target_f: np.ndarray, *, k: int = 5) -> np.ndarray:
    """Mean cosine similarity of each pool item to its ``k`` nearest target items (exact search)."""
    sims, _ = nearest(target_f, pool_f, k=k)
    return sims.mean(axis=1)


def domain_logit(
    pool_f: np.ndarray, target_f: np.ndarray, *, negatives: int = 20_000, steps: int = 300, seed: int = 0
) -> np.ndarray:
    """log p(target|x) − log p(pool|x) from a class-balanced logistic regression on standardised features,
    fitted on the target items against a random pool sample; higher = more like the target domain."""
    import torch

    rng = np.random.default_rng(seed)
    neg = rng.choice(len(pool_f), size=min(negatives, len(pool_f)), replace=False)
    xn = np.asarray(pool_f[np.sort(neg)], dtype=np.float32)
    xp = np.asarray(target_f, dtype=np.float32)
    mu, sd = xn.mean(0), xn.std(0) + 1e-6
    x = torch.from_numpy((np.concatenate([xp, xn]) - mu) / sd)
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
    out = np.empty(len(pool_f), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(pool_f), 65_536):
            block = torch.from_numpy((np.asarray(pool_f[s : s + 65_536], dtype=np.float32) - mu) / sd)
            out[s : s + len(block)] = lin(block)[:, 0].numpy()
    return out
