"""The whole server pipeline as one pure function: target arrays + pool in, payload bytes + metrics out.

The worker wraps it with the database; benchmarks call it directly.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plada.server.pipeline.selection import ScoreInputs, create_selector, largest_fitting, select
from plada.server.pipeline.teacher import score_pool, train_teacher
from plada.shared.errors import InvalidSpecError
from plada.shared.payload import Payload, encode_payload, payload_sha256, read_header
from plada.shared.pool import Pool
from plada.shared.schemas import TaskSpec

StageProgress = Callable[[float, str], None]
_TEACHER_SHARE, _SCORE_SHARE = 0.6, 0.3


@dataclass(frozen=True)
class PipelineResult:
    payload: Payload
    data: bytes
    sha256: str
    metrics: dict[str, Any]


def run_pipeline(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    spec: TaskSpec,
    *,
    version: int,
    device: torch.device,
    progress: StageProgress | None = None,
) -> PipelineResult:
    """Train the teacher, score the pool, keep the best items under the spec's budget, encode the payload."""
    report = progress or (lambda _f, _m: None)
    t0 = time.perf_counter()
    k = len(spec.classes)
    teacher = train_teacher(
        x,
        y,
        k,
        spec.teacher,
        image_shape=pool.image_shape,
        device=device,
        progress=lambda f, m: report(_TEACHER_SHARE * f, f"teacher: {m}"),
    )
    t1 = time.perf_counter()
    logits, feats = score_pool(
        teacher,
        pool.batch,
        len(pool),
        progress=lambda d, n: report(_TEACHER_SHARE + _SCORE_SHARE * d / n, f"scoring pool: {d:,}/{n:,}"),
    )
    t2 = time.perf_counter()
    report(_TEACHER_SHARE + _SCORE_SHARE, "selecting")
    sel = spec.selector
    scores = create_selector(sel.name)(ScoreInputs(logits=logits, features=feats, seed=sel.seed))
    labels = logits.argmax(axis=1).astype(np.int64)

    def build(count: int) -> tuple[Payload, bytes]:
        kept = select(scores, labels, count, n_classes=k, alpha=sel.safety_net_alpha, share=sel.safety_net_share)
        tiers = None
        if spec.tiers > 1 and len(kept):  # tier 0 = the best-scored share of the kept items
            rank = np.argsort(np.argsort(scores[kept], kind="stable"), kind="stable")
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
            meta={"selector": sel.name},
        )
        return p, encode_payload(p, codec=spec.codec, layout=pool.layout)

    if spec.max_bytes is not None:
        count, size = largest_fitting(len(pool), lambda c: len(build(c)[1]), spec.max_bytes)
        if count == 0:
            raise InvalidSpecError(
                f"max_bytes {spec.max_bytes} is smaller than the payload with a single item "
                f"({len(build(1)[1])} bytes; the header with class names alone is {size})"
            )
    else:
        assert spec.keep is not None
        count = max(1, round(spec.keep * len(pool)))
    payload, data = build(count)
    t3 = time.perf_counter()
    prefixes = Counter(str(pool.manifest.keys[i]).split("/", 1)[0] for i in payload.indices)
    metrics: dict[str, Any] = {
        "teacher": {
            "arch": spec.teacher.arch,
            "val_accuracy": teacher.val_accuracy,
            "train_accuracy": teacher.train_accuracy,
            "n_train": teacher.n_train,
            "n_val": teacher.n_val,
            "epochs": spec.teacher.epochs,
            "split": "server validation",
        },
        "selection": {
            "selector": sel.name,
            "safety_net_share": sel.safety_net_share,
            "safety_net_alpha": sel.safety_net_alpha,
            "keep_fraction": len(payload) / len(pool),
            "n_kept": len(payload),
            "max_bytes": spec.max_bytes,
            "label_counts": np.bincount(payload.labels, minlength=k).tolist(),
            "tiers": payload.n_tiers,
            "kept_by_source": dict(prefixes.most_common(20)),
        },
        "payload": {
            "bytes": len(data),
            "sha256": payload_sha256(data),
            "codec": read_header(data)[0]["codec"],
            # the paper's codec on the same selection (it cannot carry tiers, so without them)
            "paper_codec_bytes": len(encode_payload(dataclasses.replace(payload, tiers=None), codec="paper-v1")),
        },
        "timing_s": {
            "teacher": round(t1 - t0, 3),
            "scoring": round(t2 - t1, 3),
            "selection_encode": round(t3 - t2, 3),
            "total": round(t3 - t0, 3),
        },
        "device": str(device),
    }
    report(1.0, "done")
    return PipelineResult(payload=payload, data=data, sha256=payload_sha256(data), metrics=metrics)
