"""Selectors (a registry) and the keep rule: global ranking, optional Safety-Net class quotas, byte budgets.

A selector turns teacher outputs into a score per pool item (lower = keep first). ``select`` then keeps the
best B items, reserving a share ``s`` of B for per-class quotas K_c = min(N_c, round(s·B·N_c^α / Σ N^α))
(PLADA's Safety-Net, with the normalisation the paper leaves open written down here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from plada.server.pipeline import blocks, scoring


@dataclass(frozen=True)
class ScoreInputs:
    """What a selector may look at. Features are the pool's cached backbone features when it has an index,
    else the teacher's penultimate features; ``target_features`` are the publisher's training images (never
    the held-out validation part) embedded the same way."""

    logits: np.ndarray  # (N, k) teacher logits over the pool
    features: np.ndarray | None = None  # (N, D)
    target_features: np.ndarray | None = None  # (n, D)
    seed: int = 0
    stream: blocks.Streaming = blocks.LOCAL  # how pool-wide passes run (block size; here or on Ray)
    knn: np.ndarray | None = None  # (N,) mean cosine to the knn_k nearest targets, when a survey pass made it
    knn_k: int = 0
    # a compressed index's full-width rows and the training uploads' full features: the domain classifier (a
    # linear model on standardised features) reads these when they exist
    fit_features: np.ndarray | None = None
    fit_targets: np.ndarray | None = None


Selector = Callable[[ScoreInputs], np.ndarray]
_REGISTRY: dict[str, Selector] = {}


def register_selector(name: str) -> Callable[[Selector], Selector]:
    def deco(fn: Selector) -> Selector:
        if name in _REGISTRY:
            raise ValueError(f"selector {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_selectors() -> list[str]:
    return sorted(_REGISTRY)


def create_selector(name: str, **options: Any) -> Selector:
    """Look up a selector; ``None`` options are dropped so callers can pass optional settings through."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown selector {name!r}; known: {', '.join(list_selectors())}")
    opts = {k: v for k, v in options.items() if v is not None}
    fn = _REGISTRY[name]
    if not opts:
        return fn
    return lambda inputs: fn(inputs, **opts)


@register_selector("energy")
def _energy(inputs: ScoreInputs) -> np.ndarray:
    return scoring.energy(inputs.logits)


@register_selector("opposite-energy")
def _opposite_energy(inputs: ScoreInputs) -> np.ndarray:
    """Highest energy first: the paper's rule for far-OOD targets."""
    return -scoring.energy(inputs.logits)


@register_selector("entropy")
def _entropy(inputs: ScoreInputs) -> np.ndarray:
    return scoring.entropy(inputs.logits)


@register_selector("msp")
def _msp(inputs: ScoreInputs) -> np.ndarray:
    return scoring.msp(inputs.logits)


@register_selector("random")
def _random(inputs: ScoreInputs) -> np.ndarray:
    return np.random.default_rng(inputs.seed).random(len(inputs.logits))


def _need_features(inputs: ScoreInputs, name: str) -> tuple[np.ndarray, np.ndarray]:
    if inputs.features is None or inputs.target_features is None:
        raise ValueError(f"selector {name!r} needs pool and target features")
    return inputs.features, inputs.target_features


@register_selector("domain")
def _domain(inputs: ScoreInputs, negatives: int = 20_000, steps: int = 300) -> np.ndarray:
    """Density ratio target/pool from a logistic classifier on features: the pool items most like the target
    domain first, whatever the teacher thinks of them (energy cannot tell a confident mistake from a match)."""
    pool_f, tgt_f = _need_features(inputs, "domain")
    if inputs.fit_features is not None and inputs.fit_targets is not None:
        pool_f, tgt_f = inputs.fit_features, inputs.fit_targets
    return -scoring.domain_logit(
        pool_f, tgt_f, negatives=negatives, steps=steps, seed=inputs.seed, stream=inputs.stream
    )


@register_selector("knn")
def _knn(inputs: ScoreInputs, k: int = 5) -> np.ndarray:
    """Mean cosine similarity to the ``k`` nearest target images (faiss when installed): nearest first."""
    pool_f, tgt_f = _need_features(inputs, "knn")
    if inputs.knn is not None and inputs.knn_k == max(1, min(k, len(tgt_f))):
        return -inputs.knn.astype(np.float64)
    return -scoring.knn_similarity(pool_f, tgt_f, k=k, stream=inputs.stream)


def safety_net_quotas(counts: np.ndarray, budget: int, *, alpha: float, share: float) -> np.ndarray:
    """K_c = min(N_c, round(s·B·N_c^α / Σ_{N>0} N^α)); classes with N_c = 0 get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    quotas = np.zeros(len(counts), dtype=np.int64)
    if share <= 0 or budget <= 0 or not present.any():
        return quotas
    w = np.zeros_like(counts)
    w[present] = counts[present] ** alpha
    raw = np.rint(share * budget * w / w.sum()).astype(np.int64)
    return np.minimum(raw, counts.astype(np.int64))


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """Each position's rank among the earlier positions with the same key (0 for the first of its key)."""
    m = len(keys)
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if m else np.zeros(0, np.int64)
    within = np.empty(m, dtype=np.int64)
    within[by_key] = np.arange(m) - np.repeat(starts, np.diff(np.r_[starts, m]))
    return within


def diversified_order(
    scores: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray | Callable[[np.ndarray], np.ndarray],
    budget: int,
    *,
    breadth: float,
) -> np.ndarray:
    """A ranking that spreads picks over strata (feature clusters): among the ``breadth``·B best-scored
    items, the best of every (label, stratum) comes first, then every second best, and so on; the rest of
    the pool follows in score order. Relevance still gates what is eligible; diversity orders within it.
    ``strata``: one per pool item, or a function giving those of the rows asked (only the best ``breadth``·B
    are looked at)."""
    order = np.argsort(scores, kind="stable")
    m = int(min(len(order), max(budget, round(breadth * budget))))
    top = order[:m]
    st = strata(top) if callable(strata) else strata[top]
    cell = labels[top].astype(np.int64) * (int(st.max(initial=0)) + 1) + st
    # rank of each item inside its cell (top is already in score order, so a stable sort keeps that order)
    within = _rank_within(cell)
    return np.concatenate([top[np.lexsort((np.arange(m), within))], order[m:]])


def reachable(scores: np.ndarray, labels: np.ndarray, count: int, *, factor: float) -> np.ndarray:
    """The rows (sorted) a keep of ``count`` could plausibly reach on a ranking close to ``scores``: the best
    ``factor``·count overall and the best ``factor``·count / (labels present) of every label (class quotas
    reach down each label's own ranking)."""
    n = len(scores)
    if n == 0 or count <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(scores, kind="stable")
    reach = int(np.ceil(factor * count))
    per_label = int(np.ceil(reach / max(1, len(np.unique(labels)))))
    pick = np.zeros(n, dtype=bool)
    pick[order[:reach]] = True
    pick[order[_rank_within(labels[order].astype(np.int64)) < per_label]] = True
    return np.flatnonzero(pick)


def at_risk(scores: np.ndarray, labels: np.ndarray, rows: np.ndarray, fine: np.ndarray, count: int) -> np.ndarray:
    """Rows outside ``rows`` (sorted) whose exact score could still beat what a keep of ``count`` reads on the
    exact scores ``fine`` of ``rows``: the ``count``-th best overall and the ``count``/(labels present)-th of each
    label. "Could" uses the most any rescored row's exact score came out better than its estimate (negative when
    every estimate flatters: projected cosines run ~0.1 high on the photo world), so an estimate's bias and
    spread are measured on the pool and task at hand, not assumed."""
    n = len(scores)
    if len(rows) == 0 or count <= 0:
        return np.zeros(0, np.int64)
    slack = float(np.max(scores[rows] - fine))
    present = np.unique(labels)
    per_label = int(np.ceil(count / max(1, len(present))))
    bound = np.full(int(labels.max(initial=0)) + 1, np.sort(fine)[min(count, len(fine)) - 1], np.float64)
    lab = labels[rows]
    for c in present:
        own = np.sort(fine[lab == c])
        bound[c] = max(bound[c], own[per_label - 1]) if len(own) >= per_label else np.inf
    outside = np.ones(n, dtype=bool)
    outside[rows] = False
    return np.flatnonzero(outside & (scores - slack < bound[labels]))


def rescored(scores: np.ndarray, rows: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """``scores`` with ``rows`` scored again (``fine``) and every other row ranked after all of them, in its old
    order: a shortlist taken on approximate scores and ranked on exact ones, never mixing the two scales."""
    out = np.asarray(scores, dtype=np.float64).copy()
    if len(rows) == 0:
        return out
    rest = np.ones(len(out), dtype=bool)
    rest[rows] = False
    out[rows] = fine
    if rest.any():
        out[rest] += float(np.max(fine)) - float(out[rest].min()) + 1.0
    return out


def select(
    scores: np.ndarray,
    labels: np.ndarray,
    budget: int,
    *,
    n_classes: int,
    alpha: float = 0.5,
    share: float = 0.0,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (sorted) of the ``budget`` items to keep: quotas first, then the ranking (``order``, by default
    ascending score)."""
    n = len(scores)
    if order is None:
        order = np.argsort(scores, kind="stable")
    budget = int(min(max(budget, 0), len(order)))  # an order may leave items out (e.g. excluded duplicates)
    if share <= 0:
        return np.sort(order[:budget])
    chosen = np.zeros(n, dtype=bool)
    quotas = safety_net_quotas(np.bincount(labels[order], minlength=n_classes), budget, alpha=alpha, share=share)
    ranked_labels = labels[order]
    for c in np.flatnonzero(quotas):
        chosen[order[ranked_labels == c][: quotas[c]]] = True
    over = int(chosen.sum()) - budget
    if over > 0:  # rounding can overshoot by a few: drop the worst-ranked quota picks
        picked = order[chosen[order]]
        chosen[picked[-over:]] = False
    rest = budget - int(chosen.sum())
    if rest > 0:
        remaining = order[~chosen[order]]
        chosen[remaining[:rest]] = True
    return np.flatnonzero(chosen)


def largest_fitting(count_max: int, size_of: Callable[[int], int], max_bytes: int) -> tuple[int, int]:
    """Largest K in [1, count_max] with size_of(K) ≤ max_bytes, by bisection; returns (K, bytes).

    Encoded size grows with K almost monotonically; bisection finds a fitting K and the final answer is
    always checked, so the budget is never exceeded. Returns (0, size_of(0)) when not even one item fits.
    """
    lo, hi = 0, count_max
    best = (0, size_of(0))
    if best[1] > max_bytes:
        return best
    while lo < hi:
        mid = (lo + hi + 1) // 2
        size = size_of(mid)
        if size <= max_bytes:
            lo, best = mid, (mid, size)
        else:
            hi = mid - 1
    return best
