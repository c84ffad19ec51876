"""Server-side validation: simulate the client for each candidate selection and keep the best one.

No single selection rule wins on every task (energy collapses onto confident mistakes far from the target
domain, a domain classifier can collapse onto few classes, random wastes budget when the target is a small
corner of the pool). So the worker tries a few candidates, trains a short *proxy student* on each one's
items with the teacher's labels — exactly what a client will do, only shorter — and scores it on the
publisher's held-out validation images, which neither the teacher nor any selector has seen. The best
validation accuracy wins; candidates within ``tolerance`` of it are treated as tied and the smallest payload
among them is shipped. Test data is never looked at: the server has none.

Probe proxies are the client's own probe (cross-validated L2, ten L-BFGS fits). With many classes and many kept
items that is several seconds a candidate (100 classes × 5,000 items: ~7 s on 2 cores), so above
``ProxyConfig.screen_above`` the field is *screened* first: one fit per candidate at the teacher's L2 picks the
winner (``confirm`` = 1; more candidates may be checked), and the client's own probe on it gives the predicted
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from plada.server.pipeline import blocks
from plada.server.pipeline.selection import (
    list_selectors,
)
from plada.server.pipeline.teacher import TeacherOutput
from plada.shared import nn as pnn
from plada.shared.errors import InvalidSpecError
from plada.shared.pool import Pool
from plada.shared.probe import fit_linear_probe
from plada.shared.schemas import SelectorOptions


@dataclass(frozen=True)
class Candidate:
    """One selection recipe: a relevance score, class quotas (Safety-Net share/α) and optional diversity."""

    selector: str
    share: float = 0.0
    alpha: float = 0.5
    diversity: float = 0.0  # 0 = plain ranking; b > 0 = spread picks over clusters among the b·B best
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        parts = [self.selector]
        if self.options:  # two recipes of one selector must not share a label (tables, comparisons)
            parts[0] += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.options.items())) + ")"
        if self.share > 0:
            parts.append(f"quota s={self.share:g} α={self.alpha:g}")
        if self.diversity > 0:
            parts.append(f"diverse×{self.diversity:g}")
        return " + ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "safety_net_share": self.share,
            "safety_net_alpha": self.alpha,
            "diversity": self.diversity,
            **({"options": self.options} if self.options else {}),
        }


# The default field: the paper's recipe, its Safety-Net variant, the random baseline and plada's
# feature-based rules with class-balanced quotas (α = 0: equal per class) with and without diversity.
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("energy"),
    Candidate("energy", share=0.5, alpha=0.5),
    Candidate("random"),
    Candidate("domain", share=1.0, alpha=0.0),
    Candidate("knn", share=1.0, alpha=0.0),
    Candidate("domain", share=1.0, alpha=0.0, diversity=3.0),
)
FEATURE_SELECTORS = frozenset({"domain", "knn"})


# Multiply-adds of one L-BFGS evaluation of a probe proxy (fitted rows × feature columns × classes) above which
# the field is screened. At 1 % of ImageNet-1K on full-width rows (12,812 × 1,280 × 10 = 1.6e8) one screen fit
# takes 1–2 s on 2 cores and the client-identical cross-validated probe ~6 s: six of those would be ~35 s, the
# screen and one confirmation ~15 s. 10-class tasks on the photo world stay under it (2,000 × 1,280 × 10);
# 100 classes × 5,000 items are over.
SCREEN_ABOVE = 1e8
TOLERANCE = 0.005  # accuracies this close are a tie: the smaller payload wins


@dataclass(frozen=True)
class ProxyConfig:
    epochs: int = 6
    max_samples: int = 24_000  # epochs shrink for large selections so a candidate costs about the same
    batch_size: int = 128
    seed: int = 0
    kind: str = "smallcnn"  # or "probe": a linear head on cached pretrained features
    screen_above: float = SCREEN_ABOVE  # probe proxies only; float("inf") never screens, 0 always does
    confirm: int = 1  # candidates the client's own probe checks after a screen

    def epochs_for(self, n_items: int) -> int:
        return int(min(self.epochs, max(2, round(self.max_samples / max(n_items, 1)))))


def proxy_accuracy(
    pool: Pool,
    kept: np.ndarray,
    labels: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cfg: ProxyConfig,
    *,
    device: torch.device,
    progress: pnn.Progress | None = None,
) -> float:
    """Train a fresh small student on ``pool[kept]`` with ``labels`` and return its validation accuracy."""
    if len(kept) == 0:
        return 0.0
    h, w, c = pool.image_shape
    model = pnn.create_model("smallcnn", in_chans=c, num_classes=n_classes, seed=cfg.seed)
    fit = pnn.FitConfig(epochs=cfg.epochs_for(len(kept)), batch_size=cfg.batch_size, seed=cfg.seed)
    pnn.fit(model, pool.batch(kept), labels, fit, size=(h, w), channels=c, device=device, progress=progress)
    return pnn.accuracy(model, x_val, y_val, size=(h, w), channels=c, device=device)


def stratified_sample(labels: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Sorted positions of about ``m`` rows, each class in proportion to its share (at least one each)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        out.append(rng.choice(rows, size=max(1, min(len(rows), round(m * len(rows) / len(labels)))), replace=False))
    return np.sort(np.concatenate(out))


def probe_proxy_accuracy(
    pool_features: np.ndarray,
    kept: np.ndarray,
    labels: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cfg: ProxyConfig,
    *,
    l2: float | None = None,
) -> float:
    """A head-only client in miniature: the same linear probe a client fits on the kept items' frozen
    features (``plada-client train --head-only``), scored on the validation images' features. Past
    ``cfg.max_samples`` kept items it is fitted on a class-stratified sample of them (ImageNet-21K at 1 % keeps
    142,000: six full fits would cost minutes, and the candidates' ranking is what the proxy is for). ``l2`` given:
    the screen, one fit at that L2 (no cross-validation, no temperature: accuracy needs neither)."""
    if len(kept) == 0:
        return 0.0
    kept, labels = np.asarray(kept), np.asarray(labels)
    if len(kept) > cfg.max_samples:
        pick = stratified_sample(labels, cfg.max_samples, cfg.seed)
        kept, labels = kept[pick], labels[pick]
    probe = fit_linear_probe(
        blocks.take(pool_features, kept), labels, n_classes, l2=l2, calibrate=l2 is None, seed=cfg.seed
    )
    return probe.accuracy(f_val, y_val)


def probe_work(n_items: int, dim: int, n_classes: int, cfg: ProxyConfig) -> float:
    """Multiply-adds of one L-BFGS evaluation of the probe proxy on ``n_items`` kept items (what a fit costs
    per iteration; compared with ``cfg.screen_above``)."""
    return float(min(n_items, cfg.max_samples)) * dim * n_classes


def shortlist(screened: list[float], n_bytes: list[int], confirm: int) -> list[int]:
    """Positions of the candidates the client's probe checks: first the one ``choose`` would pick on the screen
    (best accuracy, near-ties to the smaller payload), then the next best screens, ``confirm`` in all."""
    best = max(screened)
    first = min((i for i, a in enumerate(screened) if a >= best - TOLERANCE), key=lambda i: (n_bytes[i], i))
    rest = sorted((i for i in range(len(screened)) if i != first), key=lambda i: (-screened[i], i))
    return sorted([first, *rest][: max(1, confirm)])


@dataclass
class Trial:
    candidate: Candidate
    kept: np.ndarray
    n_bytes: int
    val_accuracy: float
    extra: dict[str, Any] = field(default_factory=dict)
    confirmed: bool = True  # False: screened out; ``val_accuracy`` is then the screen's, which decides nothing

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.candidate.label,
            **self.candidate.as_dict(),
            "n_kept": len(self.kept),
            "bytes": self.n_bytes,
            "val_accuracy": round(self.val_accuracy, 4),
            **({} if self.confirmed else {"screened_out": True}),
            **self.extra,
        }


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """A 95 % interval for an accuracy measured on ``n`` images (Wilson score). The predicted client accuracy
    comes from the publisher's held-out images, often only a hundred or two: its sampling error alone is
    several points, and a client whose images differ from the publisher's can land outside it too."""
    if n <= 0:
        return (0.0, 1.0)
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def choose(trials: list[Trial], tolerance: float = TOLERANCE) -> Trial:
    """Best validation accuracy; near-ties (within ``tolerance``) go to the smaller payload, then list order.
    Only confirmed trials compete (a screen's accuracy is another probe's)."""
    trials = [t for t in trials if t.confirmed] or trials
    best = max(t.val_accuracy for t in trials)
    tied = [t for t in trials if t.val_accuracy >= best - tolerance]
    return min(tied, key=lambda t: t.n_bytes)


RETENTION_FLOOR = 0.8  # a student that keeps less than this share of the teacher's accuracy is flagged


# Shares of the upload less like the pool than 95 % of the pool's own items (≈ 5 % for a task drawn from the
# pool's domain): above 0.25 (5×) the task is partly outside the domain, above 0.5 (most of it) far outside.
ATYPICAL_PARTLY, ATYPICAL_FAR = 0.25, 0.5


def undecided_warning(trials: list[Trial], n_val: int) -> list[str]:
    """When the validation split is too small to tell the best candidate from the next one (the runner-up's
    accuracy lies inside the best's 95 % interval, and that interval is over 10 points wide), the choice is
    close to a coin toss: say so. Wide only: on ~1,000 images (±3 points) close candidates are close in fact."""
    scored = sorted((t for t in trials if t.confirmed), key=lambda t: -t.val_accuracy)
    if len(scored) < 2 or n_val <= 0:
        return []
    best, runner = scored[0], scored[1]
    lo, hi = wilson_interval(best.val_accuracy, n_val)
    if runner.val_accuracy < lo or hi - lo <= 0.10:
        return []
    return [
        f"validation has {n_val} images (95 % interval {100 * lo:.0f}-{100 * hi:.0f} % around the best recipe's "
        f"{100 * best.val_accuracy:.1f} %): it cannot tell '{best.candidate.label}' from '{runner.candidate.label}' "
        f"({100 * runner.val_accuracy:.1f} %); the choice is close to a guess: upload more images per class"
    ]


def far_ood_warnings(
    predicted: float | None,
    out: TeacherOutput,
    proxy_kind: str,
    pool_name: str,
    k: int,
    domain: dict[str, Any] | None = None,
) -> list[str]:
    """A warning when validation predicts the client will keep less than ``RETENTION_FLOOR`` of what the
    teacher knows, naming the likeliest cause from what the server measured: a weak teacher (it labels the
    pool), weak students (small CNNs from scratch, no pretrained features), or a pool that holds little of
    the task's domain (a good teacher, pretrained students, and still no recipe transfers)."""
    teacher = out.val_accuracy
    found: list[str] = []
    if domain is not None and domain["atypical_share"] > ATYPICAL_PARTLY:
        how = "far" if domain["atypical_share"] > ATYPICAL_FAR else "partly"
        found.append(
            f"the task looks {how} out of pool {pool_name}'s domain: {domain['atypical_share']:.0%} of the upload's "
            f"images are less similar to their nearest pool item than {1 - domain['pool_quantile']:.0%} of the "
            f"pool's own items are to theirs (median cosine {domain['upload_nearest_pool_cosine_median']:.2f} vs "
            f"{domain['pool_nearest_pool_cosine_median']:.2f}); the shipped recipe is the best validation found, "
            "but expect the client to depend on it more than usual"
        )
    if predicted is None or not predicted < max(1.5 / k, RETENTION_FLOOR * teacher):
        return found
    head = (
        f"predicted client accuracy {predicted:.1%} is far below the teacher's {teacher:.1%} "
        f"(server validation; {predicted / max(teacher, 1e-9):.0%} retained)"
    )
    if teacher < max(2.0 / k, 0.5):
        cause = (
            f"likely cause: the teacher ({out.arch}) is weak, and its labels are what the pool items carry; "
            "a stronger teacher (a pretrained feature index: 'plada-server pool embed' with local weights, or "
            "a pretrained timm arch) comes first"
        )
    elif proxy_kind != "probe" and not out.pretrained_features:
        cause = (
            "likely cause: the students — small CNNs trained from scratch on a few thousand pool images; a "
            "pretrained feature index makes the proxies (and head-only or pretrained clients) much stronger; "
            f"if that does not help, pool {pool_name} holds little of this task's domain"
        )
    else:
        cause = (
            f"likely cause: pool {pool_name} holds little of this task's domain (far out of distribution: the "
            "teacher is good and the students are pretrained, yet no selection recipe transfers); consider a "
            "larger budget, another pool, or sending labelled target data instead"
        )
    return [f"{head}; {cause}", *found]


def resolve_proxy(kind: str, out: TeacherOutput) -> str:
    """``auto``: the probe proxy when pretrained features exist for the pool and the upload (it predicts a
    head-only client in seconds), else the small CNN on pixels (what the mini world's clients train)."""
    have = out.pool_features is not None and out.target_features is not None
    if kind == "probe" and not have:
        raise InvalidSpecError("selector.proxy 'probe' needs cached pool features: run 'plada-server pool embed'")
    if kind == "auto":
        return "probe" if have and out.pretrained_features else "smallcnn"
    return kind


def candidates_for(sel: SelectorOptions, have_features: bool) -> list[Candidate]:
    """``auto`` → the default field (feature rules only when features exist); a name → that one recipe."""
    if sel.name == "auto":
        return [c for c in DEFAULT_CANDIDATES if have_features or c.selector not in FEATURE_SELECTORS]
    if sel.name not in list_selectors():
        raise InvalidSpecError(f"unknown selector {sel.name!r}; known: auto, {', '.join(list_selectors())}")
    if sel.name in FEATURE_SELECTORS and not have_features:
        raise InvalidSpecError(f"selector {sel.name!r} needs features; this teacher and pool provide none")
    return [Candidate(sel.name, share=sel.safety_net_share, alpha=sel.safety_net_alpha, diversity=sel.diversity)]
