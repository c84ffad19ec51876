"""The metrics document of a version: what the teacher, the selection, validation, the audit and the
payload measured, with the split each number was measured on. Built in one place (``build_metrics``); the
worker adds only who ran it (worker, attempt) and the preview's address is added once the preview exists.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from plada.server.pipeline.records import Built, Prepared
from plada.server.pipeline.validate import ProxyConfig, Trial, wilson_interval
from plada.shared.payload import encode_payload, payload_sha256, read_header
from plada.shared.schemas import TaskSpec


def build_metrics(
    prep: Prepared,
    spec: TaskSpec,
    chosen: Built,
    trials: list[Trial],
    proxy: ProxyConfig,
    *,
    warnings: list[str],
    timing: dict[str, float],
    device: str,
) -> dict[str, Any]:
    """The document stored with the version and shown by the dashboard, the CLI and the version page."""
    out, pool, sel, va = prep.teacher, prep.pool, spec.selector, prep.va
    k = len(spec.classes)
    cand, payload, data, predicted = chosen.candidate, chosen.payload, chosen.data, chosen.val_accuracy
    prefixes = Counter(str(pool.manifest.keys[i]).split("/", 1)[0] for i in payload.indices)
    return {
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
                {"arch": "probe", "features": out.feature_source, "max_samples": proxy.max_samples}
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
        "timing_s": timing,
        "device": device,
    }
