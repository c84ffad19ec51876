"""The whole server pipeline as one pure function: target arrays + pool in, payload bytes + metrics out.

Stages: split the publisher's data (train / held-out validation) → teacher → pool logits (+ features) →
leakage audit → candidate selections under the budget → proxy students on the validation images → the
winning payload. The worker wraps it with the database; benchmarks call it directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from plada.server.pipeline import scoring
from plada.server.pipeline.clusters import feature_strata
from plada.server.pipeline.features import FeatureIndex, open_feature_index
from plada.server.pipeline.leakage import LeakageReport, audit_leakage, domain_typicality
from plada.server.pipeline.preview import PER_CLASS, build_preview, preview_bytes
from plada.server.pipeline.selection import (
    ScoreInputs,
    create_selector,
    diversified_order,
    largest_fitting,
    list_selectors,
    select,
)
from plada.server.pipeline.teacher import score_pool, stratified_split, train_teacher
from plada.server.pipeline.teacher_cache import TeacherCache, teacher_key
from plada.server.pipeline.validate import (
    DEFAULT_CANDIDATES,
    FEATURE_SELECTORS,
    Candidate,
    ProxyConfig,
    Trial,
    choose,
    probe_proxy_accuracy,
    proxy_accuracy,
    wilson_interval,
)
from plada.shared import nn as pnn
from plada.shared.errors import InvalidSpecError
from plada.shared.payload import Payload, encode_payload, payload_sha256, read_header
from plada.shared.pool import Pool
from plada.shared.probe import fit_linear_probe
from plada.shared.schemas import SelectorOptions, TaskSpec

StageProgress = Callable[[float, str], None]
# progress shares of the stages (they add to 1 with the final encode)
_TEACHER, _SCORE, _VALIDATE = 0.35, 0.2, 0.4


@dataclass(frozen=True)
class PipelineResult:
    payload: Payload
    data: bytes
    sha256: str
    metrics: dict[str, Any]
    built: list[Built] = field(default_factory=list)  # every candidate's payload (the benchmark trains on them)
    attachments: dict[str, bytes] = field(default_factory=dict)  # sha256 → bytes: the preview and what it names


@dataclass
class TeacherOutput:
    """What the rest of the pipeline needs from a teacher, whichever kind it was."""

    arch: str
    logits: np.ndarray  # (N, k) over the pool
    pool_features: np.ndarray | None
    target_features: np.ndarray | None  # every upload image, embedded like the pool
    feature_source: str
    val_accuracy: float
    train_accuracy: float
    n_train: int
    n_val: int
    classify: Callable[[np.ndarray], np.ndarray] | None = None  # images → logits (benchmarks measure the teacher)
    details: dict[str, Any] = field(default_factory=dict)
    pretrained_features: bool = False  # pool/target features come from an ImageNet-pretrained backbone


def resolve_teacher_arch(arch: str, index: FeatureIndex | None) -> str:
    """``auto``: a probe on the pool's features when they come from a pretrained backbone (seconds, and as good
    as fine-tuning on small tasks), else the small CNN trained on pixels."""
    if arch != "auto":
        return arch
    return "probe" if index is not None and index.pretrained else "smallcnn"


def _features_source(index: FeatureIndex) -> str:
    return f"index {index.name} ({index.info['arch']}, model {index.model_id[:12]})"


def run_teacher(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
    spec: TaskSpec,
    index: FeatureIndex | None,
    *,
    device: torch.device,
    report: StageProgress,
) -> TeacherOutput:
    """A probe head on the pool's cached features (no pool forward pass), or a CNN/timm model trained on
    pixels that then labels the pool in chunks. Either way the held-out part is only used to measure."""
    k = len(spec.classes)
    arch = resolve_teacher_arch(spec.teacher.arch, index)
    if arch == "probe":
        if index is None:
            raise InvalidSpecError(
                f"teacher 'probe' needs cached features for pool {pool.name}: run 'plada-server pool embed {pool.name}'"
            )
        report(0.0, "teacher: embedding the upload with the pool's backbone")
        tf = index.embed(x, device=device)
        probe = fit_linear_probe(tf[tr], y[tr], k, seed=spec.teacher.seed)
        report(_TEACHER, f"teacher: probe trained (L2 {probe.l2:g}, temperature {probe.temperature:.2f})")
        logits = probe.logits(index.features)
        report(_TEACHER + _SCORE, "pool scored from cached features")
        return TeacherOutput(
            "probe",
            logits,
            index.features,
            tf,
            _features_source(index),
            probe.accuracy(tf[va], y[va]),
            probe.accuracy(tf[tr], y[tr]),
            len(tr),
            len(va),
            classify=lambda imgs: probe.logits(index.embed(imgs, device=device)),
            details={"l2": probe.l2, "temperature": round(probe.temperature, 4), **probe.info},
            pretrained_features=index.pretrained,
        )
    if spec.teacher.pretrained:
        try:  # a missing weights file is the publisher's (or operator's) to fix: no retries
            pnn.find_weights(arch)
        except ValueError as exc:
            raise InvalidSpecError(f"teacher.pretrained: {exc}") from exc
    teacher = train_teacher(
        x,
        y,
        k,
        spec.teacher.model_copy(update={"arch": arch}),
        image_shape=pool.image_shape,
        device=device,
        progress=lambda f, m: report(_TEACHER * f, f"teacher: {m}"),
    )
    logits, feats = score_pool(
        teacher,
        pool,
        progress=lambda d, n: report(_TEACHER + _SCORE * d / n, f"scoring pool: {d:,}/{n:,}"),
    )

    def run(imgs: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The trained teacher on images outside the pool (the upload, a test split), in chunks."""
        chunks = (imgs[i : i + 1024] for i in range(0, len(imgs), 1024))
        return pnn.predict(
            teacher.model, chunks, size=teacher.size, channels=teacher.channels, device=device, want_features=features
        )

    pool_f: np.ndarray | None
    target_f: np.ndarray | None
    if index is not None:
        pool_f, target_f, source = index.features, index.embed(x, device=device), _features_source(index)
    elif feats is not None:
        pool_f, target_f, source = feats, run(x, True)[1], "teacher penultimate layer"
    else:
        pool_f = target_f = None
        source = "none"

    return TeacherOutput(
        arch,
        logits,
        pool_f,
        target_f,
        source,
        teacher.val_accuracy,
        teacher.train_accuracy,
        teacher.n_train,
        teacher.n_val,
        classify=lambda imgs: run(imgs, False)[0],
        pretrained_features=index is not None and index.pretrained,
    )


RETENTION_FLOOR = 0.8  # a student that keeps less than this share of the teacher's accuracy is flagged


# Shares of the upload less like the pool than 95 % of the pool's own items (≈ 5 % for a task drawn from the
# pool's domain): above 0.25 (5×) the task is partly outside the domain, above 0.5 (most of it) far outside.
ATYPICAL_PARTLY, ATYPICAL_FAR = 0.25, 0.5


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


@dataclass
class Prepared:
    """Everything before the budget is applied: the teacher's view of the pool, the split, the audit. One
    ``Prepared`` serves any number of budgets and candidate sets (the benchmark reuses it)."""

    pool: Pool
    x: np.ndarray
    y: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    teacher: TeacherOutput
    labels: np.ndarray
    leak: LeakageReport
    inputs: ScoreInputs
    seconds: float
    domain: dict[str, Any] | None = None  # how typical the upload looks to the pool (leakage.domain_typicality)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    strata: np.ndarray | None = None
    proxy_cache: dict[tuple[str, ProxyConfig], float] = field(default_factory=dict)  # (payload sha, cfg) → acc

    def scores_of(self, cand: Candidate) -> np.ndarray:
        """The candidate's relevance scores, computed once per selector *and options* (a kNN with k = 1 is
        not the default kNN)."""
        key = cand.selector + json.dumps(cand.options, sort_keys=True, default=str) if cand.options else cand.selector
        if key not in self.scores:
            self.scores[key] = np.asarray(create_selector(cand.selector, **cand.options)(self.inputs), np.float64)
        return self.scores[key]

    def order_of(self, cand: Candidate, count: int, eligible: np.ndarray) -> np.ndarray:
        sc = self.scores_of(cand)
        if cand.diversity > 0 and self.teacher.pool_features is not None:
            if self.strata is None:
                self.strata = feature_strata(self.teacher.pool_features, seed=self.inputs.seed)
            order = diversified_order(sc, self.labels, self.strata, count, breadth=cand.diversity)
        else:
            order = np.argsort(sc, kind="stable")
        return order if eligible.all() else order[eligible[order]]


def _to_cache(out: TeacherOutput, index: FeatureIndex | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from_index = index is not None and out.pool_features is index.features
    meta = {
        "arch": out.arch,
        "feature_source": out.feature_source,
        "val_accuracy": out.val_accuracy,
        "train_accuracy": out.train_accuracy,
        "n_train": out.n_train,
        "n_val": out.n_val,
        "details": out.details,
        "pretrained_features": out.pretrained_features,
        "pool_features": "index" if from_index else ("teacher" if out.pool_features is not None else "none"),
    }
    arrays = {"logits": np.asarray(out.logits)}
    if out.target_features is not None:
        arrays["target_features"] = out.target_features
    if out.pool_features is not None and not from_index:
        arrays["pool_features"] = np.asarray(out.pool_features)
    return meta, arrays


def _from_cache(meta: dict[str, Any], arrays: dict[str, np.ndarray], index: FeatureIndex | None) -> TeacherOutput:
    pool_f = index.features if meta["pool_features"] == "index" and index is not None else arrays.get("pool_features")
    return TeacherOutput(
        meta["arch"],
        arrays["logits"],
        pool_f,
        arrays.get("target_features"),
        meta["feature_source"],
        meta["val_accuracy"],
        meta["train_accuracy"],
        meta["n_train"],
        meta["n_val"],
        details=meta["details"] | {"cached": True},
        pretrained_features=meta["pretrained_features"],
    )


def prepare(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    *,
    device: torch.device,
    progress: StageProgress | None = None,
    cache: TeacherCache | None = None,
) -> Prepared:
    """Split, teacher, pool logits and features, leakage audit. With a ``cache``, a teacher already trained
    on the same upload with the same options over the same pool is reused (no training, no pool pass)."""
    report = progress or (lambda _f, _m: None)
    t0 = time.perf_counter()
    tr, va = stratified_split(y, spec.teacher.val_fraction, spec.teacher.seed)
    index = open_feature_index(pool)
    out = None
    key = ""
    if cache is not None:
        key = teacher_key(x, y, spec.teacher, pool.pool_id, index.model_id if index else "", len(spec.classes))
        hit = cache.get(key)
        if hit is not None:
            out = _from_cache(*hit, index)
            report(_TEACHER + _SCORE, "teacher and pool scores reused from the cache")
    if out is None:
        out = run_teacher(pool, x, y, tr, va, spec, index, device=device, report=report)
        if cache is not None:
            cache.put(key, *_to_cache(out, index))
    report(_TEACHER + _SCORE, "leakage audit")
    cos = index.near_duplicate_cosine if index is not None and out.pool_features is index.features else None
    leak = audit_leakage(
        pool,
        x,
        pool_features=out.pool_features,
        target_features=out.target_features,
        **({"min_cosine": cos} if cos is not None else {}),
    )
    domain = None
    if out.pool_features is not None and leak.nn_similarity is not None:
        from_index = index is not None and out.pool_features is index.features
        domain = domain_typicality(
            out.pool_features,
            leak.nn_similarity,
            seed=spec.selector.seed,
            cache_key=f"{pool.pool_id}:{index.model_id}" if from_index and index is not None else None,
        )
    inputs = ScoreInputs(
        logits=out.logits,
        features=out.pool_features,
        target_features=out.target_features[tr] if out.target_features is not None else None,
        seed=spec.selector.seed,
    )
    labels = scoring.labels(out.logits)
    return Prepared(pool, x, y, tr, va, out, labels, leak, inputs, time.perf_counter() - t0, domain=domain)


@dataclass
class Built:
    candidate: Candidate
    payload: Payload
    data: bytes
    val_accuracy: float | None = None


def run_pipeline(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    *,
    version: int,
    device: torch.device,
    progress: StageProgress | None = None,
    cache: TeacherCache | None = None,
) -> PipelineResult:
    """Teacher, leakage audit, candidate selections under the spec's budget, validation, the payload."""
    prep = prepare(pool, x, y, spec, device=device, progress=progress, cache=cache)
    return finish(prep, spec, version=version, device=device, progress=progress)


def _scaled(report: StageProgress, base: float, span: float, msg: str) -> Callable[[float, str], None]:
    """A stage's progress (0-1 and a note) as a share ``span`` of the job's, from ``base``."""
    return lambda f, m: report(base + span * f, f"{msg} ({m})")


def finish(
    prep: Prepared,
    spec: TaskSpec,
    *,
    version: int,
    device: torch.device,
    progress: StageProgress | None = None,
    candidates: list[Candidate] | None = None,
) -> PipelineResult:
    """Apply the budget to each candidate, validate them with proxy students, pick, encode, report."""
    report = progress or (lambda _f, _m: None)
    pool, out, labels = prep.pool, prep.teacher, prep.labels
    sel = spec.selector
    k = len(spec.classes)
    t1 = time.perf_counter()
    have_features = out.pool_features is not None and out.target_features is not None
    cands = candidates if candidates is not None else candidates_for(sel, have_features)
    eligible = np.ones(len(pool), dtype=bool)
    if sel.exclude_duplicates:
        eligible[prep.leak.pool_indices] = False
    n_eligible = int(eligible.sum())

    def build(cand: Candidate, count: int) -> tuple[Payload, bytes]:
        sc = prep.scores_of(cand)
        order = prep.order_of(cand, count, eligible)
        kept = select(sc, labels, count, n_classes=k, alpha=cand.alpha, share=cand.share, order=order)
        tiers = None
        if spec.tiers > 1 and len(kept):  # tier 0 = the best-scored share of the kept items
            rank = np.argsort(np.argsort(sc[kept], kind="stable"), kind="stable")
            tiers = rank * spec.tiers // len(kept)
        p = Payload(
            tiers=tiers,
            indices=kept,
            labels=labels[kept],
            classes=tuple(spec.classes),
            pool_id=pool.pool_id,
            n_pool=len(pool),
            task=spec.name,
            version=version,
            pool_name=pool.name,
            meta={"selector": cand.selector},
        )
        return p, encode_payload(p, codec=spec.codec, layout=pool.layout)

    def count_for(cand: Candidate) -> int:
        if spec.max_bytes is None:
            assert spec.keep is not None
            return min(n_eligible, max(1, round(spec.keep * len(pool))))
        count, size = largest_fitting(n_eligible, lambda c: len(build(cand, c)[1]), spec.max_bytes)
        if count == 0:
            raise InvalidSpecError(
                f"max_bytes {spec.max_bytes} is smaller than the payload with a single item "
                f"({len(build(cand, 1)[1])} bytes; the header with class names alone is {size})"
            )
        return count

    built = [Built(c, *build(c, count_for(c))) for c in cands]
    t2 = time.perf_counter()
    proxy = ProxyConfig(epochs=sel.proxy_epochs, seed=sel.seed, kind=resolve_proxy(sel.proxy, out))
    trials: list[Trial] = []
    va = prep.va
    if sel.validate_candidates and len(va) > 0:
        for i, b in enumerate(built):
            base = _TEACHER + _SCORE + _VALIDATE * i / len(built)
            msg = f"validating {i + 1}/{len(built)}: {b.candidate.label}"
            key = (payload_sha256(b.data), proxy)  # the same selection is never trained twice
            if key in prep.proxy_cache:
                pass
            elif proxy.kind == "probe":
                assert out.pool_features is not None and out.target_features is not None
                report(base, msg)
                prep.proxy_cache[key] = probe_proxy_accuracy(
                    out.pool_features,
                    b.payload.indices,
                    b.payload.labels,
                    out.target_features[va],
                    prep.y[va],
                    k,
                    proxy,
                )
            else:
                prep.proxy_cache[key] = proxy_accuracy(
                    pool,
                    b.payload.indices,
                    b.payload.labels,
                    prep.x[va],
                    prep.y[va],
                    k,
                    proxy,
                    device=device,
                    progress=_scaled(report, base, _VALIDATE / len(built), msg),
                )
            b.val_accuracy = prep.proxy_cache[key]
            trials.append(Trial(b.candidate, b.payload.indices, len(b.data), b.val_accuracy))
        winner = choose(trials)
        chosen = next(b for b in built if b.candidate is winner.candidate)
    else:
        chosen = built[0]
    t3 = time.perf_counter()
    cand, payload, data, predicted = chosen.candidate, chosen.payload, chosen.data, chosen.val_accuracy
    warnings = far_ood_warnings(predicted, out, proxy.kind, pool.name, k, prep.domain)
    prefixes = Counter(str(pool.manifest.keys[i]).split("/", 1)[0] for i in payload.indices)
    metrics: dict[str, Any] = {
        "teacher": {
            "arch": out.arch,
            "val_accuracy": out.val_accuracy,
            "train_accuracy": out.train_accuracy,
            "n_train": out.n_train,
            "n_val": out.n_val,
            "epochs": spec.teacher.epochs if out.arch != "probe" else None,
            "cached": bool(out.details.get("cached")),
            **({"probe": out.details} if out.arch == "probe" else {}),
            "features": out.feature_source,
            "split": "server validation",
        },
        "selection": {
            "mode": "auto" if sel.name == "auto" else "fixed",
            "selector": cand.selector,
            "label": cand.label,
            "safety_net_share": cand.share,
            "safety_net_alpha": cand.alpha,
            "diversity": cand.diversity,
            "keep_fraction": len(payload) / len(pool),
            "n_kept": len(payload),
            "max_bytes": spec.max_bytes,
            "label_counts": np.bincount(payload.labels, minlength=k).tolist(),
            "tiers": payload.n_tiers,
            "kept_by_source": dict(prefixes.most_common(20)),
        },
        "validation": {
            "split": "server validation (the publisher's held-out images; never the client's test data)",
            "n_val": len(va),
            "proxy_student": (
                {"arch": "probe", "features": out.feature_source}
                if proxy.kind == "probe"
                else {"arch": "smallcnn", "epochs": proxy.epochs, "max_samples": proxy.max_samples}
            ),
            "candidates": [t.summary() for t in trials],
            "chosen": cand.label,
            "predicted_client_accuracy": predicted,
            # sampling error of the validation split only; it assumes the client's images resemble the
            # publisher's (docs/benchmarks.md, bench/split_shift.py: where they do not, the client lands lower)
            "predicted_interval_95": (
                [round(v, 4) for v in wilson_interval(predicted, len(va))] if predicted is not None else None
            ),
        },
        "leakage": prep.leak.as_metrics(excluded=sel.exclude_duplicates),
        "domain": prep.domain,
        "warnings": warnings,
        "payload": {
            "bytes": len(data),
            "sha256": payload_sha256(data),
            "codec": read_header(data)[0]["codec"],
            # the paper's codec on the same selection (it cannot carry tiers, so without them)
            "paper_codec_bytes": len(encode_payload(dataclasses.replace(payload, tiers=None), codec="paper-v1")),
        },
        "timing_s": {
            "teacher_scoring_audit": round(prep.seconds, 3),
            "select_encode": round(t2 - t1, 3),
            "validation": round(t3 - t2, 3),
            "total": round(prep.seconds + time.perf_counter() - t1, 3),
        },
        "device": str(device),
    }
    preview, attachments = build_preview(
        payload,
        prep.inputs.logits,
        prep.x,
        prep.leak.examples,
        [(b.candidate.label, b.data) for b in built],
        cand.label,
    )
    doc = preview_bytes(preview)
    attachments[hashlib.sha256(doc).hexdigest()] = doc
    metrics["preview"] = {"sha256": hashlib.sha256(doc).hexdigest(), "per_class": PER_CLASS}
    report(1.0, "done")
    return PipelineResult(
        payload=payload,
        data=data,
        sha256=payload_sha256(data),
        metrics=metrics,
        built=built,
        attachments=attachments,
    )
