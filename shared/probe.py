"""Linear probes on frozen features: the server's teacher and proxy students, and the client's head-only student.

One function on both sides, so the server's proxy students predict exactly what a head-only client will get.
A probe is a multinomial logistic regression on standardised features, fitted by full-batch L-BFGS (a few
hundred milliseconds for thousands of 1,280-d rows on a CPU), with

- class-balanced sample weights (a task's classes are rarely equally common, and a pseudo-labelled selection
  even less so), so a rare class is not traded away for a common one;
- the L2 strength chosen by k-fold cross-validation *inside the training data* (the caller's own held-out
  split stays untouched, so the accuracy it reports is honest);
- a temperature fitted on the out-of-fold logits (minimum negative log-likelihood), so that logit energies
  and probabilities mean the same thing from one task to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

L2_GRID = (1e-2, 1e-1, 1.0)
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))


@dataclass
class LinearProbe:
    """Standardise, then ``z = (f·W + b) / temperature``. Plain arrays: it pickles, saves to npz, and runs
    without torch (``logits`` is numpy)."""

    mu: np.ndarray  # (D,)
    sd: np.ndarray  # (D,)
    weight: np.ndarray  # (D, k)
    bias: np.ndarray  # (k,)
    temperature: float = 1.0
    l2: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, feats: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """Calibrated logits for (possibly memory-mapped float16) features, chunk by chunk."""
        out = np.empty((len(feats), self.n_classes), dtype=np.float32)
        w = (self.weight / self.sd[:, None]).astype(np.float32)
        b = (self.bias - (self.mu / self.sd) @ self.weight).astype(np.float32)
        for s in range(0, len(feats), chunk):
            out[s : s + chunk] = (np.asarray(feats[s : s + chunk], dtype=np.float32) @ w + b) / self.temperature
        return out

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return np.asarray(self.logits(feats).argmax(1))

    def accuracy(self, feats: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(feats) == np.asarray(y)).mean()) if len(y) else float("nan")

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mu": self.mu,
            "sd": self.sd,
            "weight": self.weight,
            "bias": self.bias,
            "temperature": np.asarray(self.temperature, dtype=np.float64),
            "l2": np.asarray(self.l2, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, a: Any) -> LinearProbe:
        return cls(a["mu"], a["sd"], a["weight"], a["bias"], float(a["temperature"]), float(a["l2"]))


def _class_weights(y: np.ndarray, k: int, balanced: bool = True) -> np.ndarray:
    if not balanced:
        return np.ones(k)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = max(int((counts > 0).sum()), 1)
    return np.where(counts > 0, len(y) / (present * np.maximum(counts, 1)), 0.0)


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    l2: float,
    cw: torch.Tensor,
    iters: int,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """(D+1, k) weights and bias of the weighted, L2-penalised softmax regression on standardised ``x``;
    ``init`` warm-starts from a neighbouring L2 strength's solution (a regularisation path converges in a
    fraction of the iterations of cold starts).

    The gradient is written out rather than taken by autograd, and the weights are held class-major (k, D):
    autograd's ``xᵀ · dz`` over a tall ``x`` is a reduction BLAS runs 4–6× slower than ``dzᵀ · x``, and every
    probe (teacher, proxies, the client's) spends nearly all its time in these two products."""
    w0 = init[:-1].T.contiguous() if init is not None else torch.zeros(k, x.shape[1])
    b0 = init[-1].clone() if init is not None else torch.zeros(k)
    w, b = w0.requires_grad_(True), b0.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=iters,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-5,
        tolerance_change=1e-7,
    )
    rows = torch.arange(len(y))
    sw = cw[y] / cw[y].sum()  # each row's share of the weighted mean

    def closure() -> torch.Tensor:
        with torch.no_grad():
            logp = torch.log_softmax(torch.addmm(b, x, w.T), dim=1)
            loss = -(logp[rows, y] * sw).sum() + l2 * w.pow(2).sum()
            dz = logp.exp_()  # softmax − one-hot, weighted: d loss / d logits
            dz[rows, y] -= 1.0
            dz *= sw[:, None]
            w.grad = dz.T @ x + (2.0 * l2) * w
            b.grad = dz.sum(0)
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]  # torch's LBFGS.step is unannotated
    return torch.cat([w.detach().T, b.detach()[None]])


def _folds(y: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Stratified fold ids: each class spread round-robin over the folds after a shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (np.arange(len(idx)) + rng.integers(n_folds)) % n_folds
    return [np.flatnonzero(fold == i) for i in range(n_folds)]


def _best_temperature(z: np.ndarray, y: np.ndarray) -> float:
    zt = torch.from_numpy(z.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    nll = [float(F.cross_entropy(zt / float(t), yt)) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def fit_linear_probe(
    feats: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    l2: float | None = None,
    l2_grid: tuple[float, ...] = L2_GRID,
    n_folds: int = 3,
    calibrate: bool = True,
    balanced: bool = True,
    iters: int = 100,
    seed: int = 0,
) -> LinearProbe:
    """Fit a probe on ``feats`` (n, D) and labels ``y``; ``l2`` None chooses it by k-fold CV on these rows.

    The temperature is fitted on out-of-fold logits when CV runs (else on the training logits, which
    over-sharpens: pass ``calibrate=False`` to keep T = 1)."""
    f = np.asarray(feats, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if len(f) == 0:
        raise ValueError("no training rows for the probe")
    mu = f.mean(0)
    sd = f.std(0) + 1e-6
    torch.manual_seed(seed)
    k = n_classes
    counts = np.bincount(y, minlength=k)
    can_cv = len(np.unique(y)) >= 2 and counts[counts > 0].min() >= n_folds
    grid = (l2,) if l2 is not None else l2_grid
    oof: dict[float, np.ndarray] = {}
    cv_acc: dict[float, float] = {}
    if can_cv and (len(grid) > 1 or calibrate):
        folds = _folds(y, n_folds, seed)
        path = sorted(grid, reverse=True)  # strongest penalty first: each solution warm-starts the next
        for va in folds:
            tr = np.setdiff1d(np.arange(len(y)), va, assume_unique=True)
            m, s = f[tr].mean(0), f[tr].std(0) + 1e-6
            xt, xv = torch.from_numpy((f[tr] - m) / s), torch.from_numpy((f[va] - m) / s)
            cw = torch.from_numpy(_class_weights(y[tr], k, balanced).astype(np.float32))
            wb = None
            for lam in path:
                wb = _fit(xt, torch.from_numpy(y[tr]), k, lam, cw, iters, init=wb)
                oof.setdefault(lam, np.zeros((len(y), k), dtype=np.float32))[va] = (xv @ wb[:-1] + wb[-1]).numpy()
        for lam in grid:
            z = oof[lam]
            # balanced accuracy: the figure the class weights optimise
            hit = z.argmax(1) == y
            cv_acc[lam] = float(np.mean([hit[y == c].mean() for c in np.unique(y)]))
        best = max(cv_acc.values())
        lam = max(v for v in grid if cv_acc[v] >= best - 1e-9)  # ties: the stronger penalty
    else:
        lam = grid[0] if l2 is not None else 1e-2
    x = torch.from_numpy((f - mu) / sd)
    cw = torch.from_numpy(_class_weights(y, k, balanced).astype(np.float32))
    w_all = _fit(x, torch.from_numpy(y), k, lam, cw, iters).numpy()
    temp = 1.0
    if calibrate:
        z_oof = oof.get(lam)
        z_fit = z_oof if z_oof is not None else ((f - mu) / sd) @ w_all[:-1] + w_all[-1]
        temp = _best_temperature(z_fit, y)
    info = {"cv_balanced_accuracy": {f"{v:g}": round(a, 4) for v, a in cv_acc.items()}, "n_train": len(y)}
    return LinearProbe(mu, sd, w_all[:-1].astype(np.float32), w_all[-1].astype(np.float32), temp, lam, info)
