"""The whole server pipeline as one pure function: target arrays + pool in, payload bytes + metrics out.

Stages: split the publisher's data (train / held-out validation) → teacher → pool logits (+ features) →
leakage audit → candidate selections under the budget → proxy students on the validation images → the
winning payload. The worker wraps it with the database; benchmarks call it directly.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from plada.server.pipeline import scoring
from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.features import open_feature_index
from plada.server.pipeline.leakage import (
    MIN_COSINE,
    SELF_SAMPLE,
    audit_leakage,
    cached_self_sims,
    compares_pixels,
    domain_typicality,
    remember_self_sims,
    self_sample,
)
from plada.server.pipeline.preview import PER_CLASS, build_preview, preview_bytes
from plada.server.pipeline.progress import SCORE, TEACHER, VALIDATE, StageProgress, scaled
from plada.server.pipeline.records import Built, PipelineResult, Prepared
from plada.server.pipeline.report import build_metrics
from plada.server.pipeline.selection import ScoreInputs, largest_fitting, select
from plada.server.pipeline.teacher import from_cache, run_teacher, stratified_split, to_cache
from plada.server.pipeline.teacher_cache import TeacherCache, teacher_key
from plada.server.pipeline.validate import (
    Candidate,
    ProxyConfig,
    Trial,
    candidates_for,
    choose,
    far_ood_warnings,
    probe_proxy_accuracy,
    probe_work,
    proxy_accuracy,
    resolve_proxy,
    shortlist,
    undecided_warning,
)
from plada.shared.errors import InvalidSpecError
from plada.shared.payload import Payload, encode_payload, payload_floor, payload_sha256
from plada.shared.pool import Pool
from plada.shared.probe import L2_GRID
from plada.shared.schemas import TaskSpec


def prepare(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    *,
    config: RunConfig | None = None,
    progress: StageProgress | None = None,
    cache: TeacherCache | None = None,
    index_name: str | None = None,
) -> Prepared:
    """Split, teacher, pool logits and features, leakage audit. With a ``cache``, a teacher already trained
    on the same upload with the same options over the same pool is reused (no training, no pool pass).
    ``index_name`` names the pool's feature index (default: its ``default`` one; a benchmark compares others)."""
    report = progress or (lambda _f, _m: None)
    config = config or RunConfig()
    t0 = time.perf_counter()
    tr, va = stratified_split(y, spec.teacher.val_fraction, spec.teacher.seed)
    index = open_feature_index(pool, index_name)
    out = None
    key = ""
    if cache is not None:
        key = teacher_key(x, y, spec.teacher, pool.pool_id, index.index_id if index else "", len(spec.classes))
        hit = cache.get(key)
        if hit is not None:
            out = from_cache(*hit, index)
            report(TEACHER + SCORE, "teacher and pool scores reused from the cache")
    if out is None:
        out = run_teacher(pool, x, y, tr, va, spec, index, config=config, report=report)
        if cache is not None:
            cache.put(key, *to_cache(out, index))
    report(TEACHER + SCORE, "leakage audit")
    stream = config.streaming()
    pool_f, target_f = out.pool_features, out.target_features
    from_index = index is not None and pool_f is index.features
    cos = index.near_duplicate_cosine if index is not None and from_index else None
    self_key = f"{pool.pool_id}:{index.index_id}" if from_index and index is not None else None
    sv, own = None, None
    if pool_f is not None and target_f is not None and len(target_f) == len(x) and len(tr) > 0:
        # one pass over the pool: the kNN scores, each upload image's nearest pool item and (once per index)
        # the pool's own nearest-other sample
        seed = spec.selector.seed
        known = cached_self_sims(self_key, SELF_SAMPLE, seed)
        rows = self_sample(len(pool_f), sample=SELF_SAMPLE, seed=seed) if known is None else np.zeros(0, np.int64)
        above = -np.inf if compares_pixels(pool, x) else (cos if cos is not None else MIN_COSINE)
        sv = scoring.survey(pool_f, target_f, knn_cols=tr, self_rows=rows, k=5, index_above=above, stream=stream)
        if known is None:
            own = sv.own
            remember_self_sims(self_key, SELF_SAMPLE, seed, rows, own)
        else:
            own = known[1]
    leak = audit_leakage(
        pool,
        x,
        pool_features=pool_f,
        target_features=target_f,
        **({"min_cosine": cos} if cos is not None else {}),
        stream=stream,
        nearest_pool=(sv.near_sims[:, None], sv.near_idx[:, None]) if sv is not None else None,
    )
    domain = None
    if pool_f is not None and leak.nn_similarity is not None:
        domain = domain_typicality(
            pool_f, leak.nn_similarity, seed=spec.selector.seed, cache_key=self_key, stream=stream, own=own
        )
    inputs = ScoreInputs(
        logits=out.logits,
        features=pool_f,
        target_features=target_f[tr] if target_f is not None else None,
        seed=spec.selector.seed,
        stream=stream,
        knn=sv.knn if sv is not None else None,
        knn_k=sv.knn_k if sv is not None else 0,
        fit_features=out.fit_features,
        fit_targets=out.fit_targets[tr] if out.fit_targets is not None else None,
    )
    labels = scoring.labels(out.logits)
    return Prepared(pool, x, y, tr, va, out, labels, leak, inputs, time.perf_counter() - t0, domain=domain)


def run_pipeline(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    *,
    version: int,
    config: RunConfig | None = None,
    progress: StageProgress | None = None,
    cache: TeacherCache | None = None,
) -> PipelineResult:
    """Teacher, leakage audit, candidate selections under the spec's budget, validation, the payload.
    ``config`` says where and how it runs (default: this process, the CPU)."""
    prep = prepare(pool, x, y, spec, config=config, progress=progress, cache=cache)
    return finish(prep, spec, version=version, config=config, progress=progress)


def validate_candidates(
    prep: Prepared,
    built: list[Built],
    proxy: ProxyConfig,
    report: StageProgress,
    *,
    device: torch.device,
) -> list[Trial]:
    """One trial per candidate, each with its proxy student's accuracy on the server's validation split (sets
    ``Built.val_accuracy``). Probe proxies past ``proxy.screen_above`` are screened first (one fit each at the
    teacher's L2, ~1/10 of the client's probe) and the client's own probe runs on the screen's winner only
    (``proxy.confirm``): at 100 classes × 5,000 items validation takes ~15 s instead of ~45 s, and the
    predicted accuracy is still the client's probe's."""
    out, va, k = prep.teacher, prep.va, int(prep.teacher.logits.shape[1])
    span = (0.0, 1.0)  # of the validation stage's progress: the screen takes its first half when it runs

    def run(b: Built, i: int, n: int, verb: str, l2: float | None = None) -> float:
        base = TEACHER + SCORE + VALIDATE * (span[0] + (span[1] - span[0]) * i / n)
        msg = f"{verb} {i + 1}/{n}: {b.candidate.label}"
        key = (payload_sha256(b.data) + (f":screen:{l2:g}" if l2 is not None else ""), proxy)
        if key in prep.proxy_cache:  # the same selection is never trained twice
            return prep.proxy_cache[key]
        report(base, msg)
        if proxy.kind == "probe":  # on the full-width rows when a compressed index keeps them
            pool_f, target_f = out.linear_pool, out.linear_targets
            assert pool_f is not None and target_f is not None
            acc = probe_proxy_accuracy(
                pool_f,
                b.payload.indices,
                b.payload.labels,
                target_f[va],
                prep.y[va],
                k,
                proxy,
                l2=l2,
            )
        else:
            acc = proxy_accuracy(
                prep.pool,
                b.payload.indices,
                b.payload.labels,
                prep.x[va],
                prep.y[va],
                k,
                proxy,
                device=device,
                progress=scaled(report, base, base + VALIDATE * (span[1] - span[0]) / n, msg),
            )
        prep.proxy_cache[key] = acc
        return acc

    confirm = list(range(len(built)))
    screened: list[float] | None = None
    if proxy.kind == "probe" and len(built) > proxy.confirm:
        assert out.linear_pool is not None
        dim = int(out.linear_pool.shape[1])
        if max(probe_work(len(b.payload), dim, k, proxy) for b in built) > proxy.screen_above:
            l2 = float(out.details.get("l2", L2_GRID[len(L2_GRID) // 2]))  # a CNN teacher has none
            span = (0.0, 0.5)
            screened = [run(b, i, len(built), "screening", l2) for i, b in enumerate(built)]
            confirm = shortlist(screened, [len(b.data) for b in built], proxy.confirm)
            span = (0.5, 1.0)
    trials = []
    for j, i in enumerate(confirm):
        built[i].val_accuracy = run(built[i], j, len(confirm), "validating")
    for i, b in enumerate(built):
        extra = {"screen_accuracy": round(screened[i], 4)} if screened is not None else {}
        if i not in confirm:
            assert screened is not None
            b.val_accuracy = screened[i]
        trials.append(Trial(b.candidate, b.payload.indices, len(b.data), b.val_accuracy or 0.0, extra, i in confirm))
    return trials


def finish(
    prep: Prepared,
    spec: TaskSpec,
    *,
    version: int,
    config: RunConfig | None = None,
    progress: StageProgress | None = None,
    candidates: list[Candidate] | None = None,
) -> PipelineResult:
    """Apply the budget to each candidate, validate them with proxy students, pick, encode, report."""
    report = progress or (lambda _f, _m: None)
    device = (config or RunConfig()).device
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

    def build(cand: Candidate, count: int, refine: bool = True) -> tuple[Payload, bytes]:
        sc = prep.scores_at(cand, count, refine=refine)
        order = prep.order_of(cand, count, eligible, refine=refine)
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
        # searched on the scores before any rescoring (a probe at half the pool must not rescore half the
        # pool), then checked, and if need be searched again below, on the scores it ships with
        count, _ = largest_fitting(n_eligible, lambda c: len(build(cand, c, refine=False)[1]), spec.max_bytes)
        if count and len(build(cand, count)[1]) > spec.max_bytes:
            count, _ = largest_fitting(count, lambda c: len(build(cand, c)[1]), spec.max_bytes)
        if count == 0:
            floor = payload_floor(
                tuple(spec.classes),
                task=spec.name,
                pool_id=pool.pool_id,
                n_pool=len(pool),
                pool_name=pool.name,
                codec=spec.codec,
                selector=cand.selector,
            )
            raise InvalidSpecError(
                f"max_bytes {spec.max_bytes} is smaller than the payload with a single item "
                f"({len(build(cand, 1)[1])} bytes; the header with class names alone is {floor})"
            )
        return count

    built = [Built(c, *build(c, count_for(c))) for c in cands]
    t2 = time.perf_counter()
    proxy = ProxyConfig(epochs=sel.proxy_epochs, seed=sel.seed, kind=resolve_proxy(sel.proxy, out))
    trials: list[Trial] = []
    if sel.validate_candidates and len(prep.va) > 0:
        trials = validate_candidates(prep, built, proxy, report, device=device)
        winner = choose(trials)
        chosen = next(b for b in built if b.candidate is winner.candidate)
    else:
        chosen = built[0]
    t3 = time.perf_counter()
    cand, payload, data, predicted = chosen.candidate, chosen.payload, chosen.data, chosen.val_accuracy
    warnings = far_ood_warnings(predicted, out, proxy.kind, pool.name, k, prep.domain)
    warnings += undecided_warning(trials, len(prep.va))
    timing = {
        "teacher_scoring_audit": round(prep.seconds, 3),
        "select_encode": round(t2 - t1, 3),
        "validation": round(t3 - t2, 3),
        "total": round(prep.seconds + time.perf_counter() - t1, 3),
    }
    metrics = build_metrics(prep, spec, chosen, trials, proxy, warnings=warnings, timing=timing, device=str(device))
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
