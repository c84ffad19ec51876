"""What a version's page shows beside its numbers, decided when the version is built: per class the kept pool
items the teacher is most sure of, the leakage audit's flagged pairs (with a thumbnail of the upload image,
since uploads are deleted after the job) and every validated candidate's payload (so two recipes can be
compared item by item). Stored as blobs beside the payload; the version's metrics keep only the digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from plada.server.pipeline.scoring import softmax
from plada.shared.payload import Payload
from plada.shared.preview import per_class_items, png_bytes

PER_CLASS = 48  # items a class keeps in the preview (the page shows them lazily)
PREVIEW_FORMAT = 1


def build_preview(
    payload: Payload,
    logits: np.ndarray,
    upload: np.ndarray,
    leakage_examples: list[dict[str, Any]],
    candidates: list[tuple[str, bytes]],
    chosen: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The preview document and the blobs it names (sha256 → bytes): the upload thumbnails of flagged pairs
    and each candidate's payload. ``logits`` are the teacher's over the whole pool."""
    k = len(payload.classes)
    labels = np.asarray(payload.labels, np.int64)
    conf = softmax(np.asarray(logits[payload.indices]))[np.arange(len(labels)), labels]
    order = per_class_items(payload.indices, payload.labels, k, conf)
    by_index = dict(zip(payload.indices.tolist(), conf.tolist(), strict=True))
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = data
        return sha

    pairs = []
    for ex in leakage_examples:
        if "upload_index" not in ex or "pool_index" not in ex:
            continue
        pairs.append(
            {
                "pool_index": int(ex["pool_index"]),
                "pool_key": ex.get("pool_key"),
                "kind": ex.get("kind"),
                "cosine": ex.get("cosine"),
                "upload_png": put(png_bytes(upload[int(ex["upload_index"])])),
            }
        )
    doc = {
        "format": PREVIEW_FORMAT,
        "per_class": PER_CLASS,
        "classes": list(payload.classes),
        "counts": [len(o) for o in order],
        "top": [[[int(i), round(by_index[int(i)], 4)] for i in o[:PER_CLASS]] for o in order],
        "leakage_pairs": pairs,
        "candidates": [{"label": label, "payload": put(data), "chosen": label == chosen} for label, data in candidates],
    }
    return doc, blobs


def preview_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
