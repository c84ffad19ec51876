"""Opt-in: one task of the real-photo world, through the product's default spec, scored on its client test split.

Runs only when ``PLADA_PHOTO_WORLD`` names the photo-world folder (``shared/photo-world``: a development world,
not on a user's machine). About four minutes on 2 CPU cores: build (~12 s), pretrained pool index (~2 min),
publish (~50 s), head-only client (~20 s). The full tables are ``bench/photo.py``'s.

    PLADA_PHOTO_WORLD=../shared/photo-world .venv/bin/python -m pytest tests/e2e/test_photo_world.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from plada.client.train import TrainConfig, train_student
from plada.server.pipeline.features import build_pretrained_index, open_feature_index
from plada.server.pipeline.publish import run_pipeline
from plada.shared.datasets.photo import build_photo_world
from plada.shared.schemas import TaskSpec

SOURCE = os.environ.get("PLADA_PHOTO_WORLD")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SOURCE or not Path(SOURCE).is_dir(), reason="set PLADA_PHOTO_WORLD to the photo world"),
]
CPU = torch.device("cpu")


def test_flowers5_at_keep_5_percent_on_the_photo_pool(tmp_path: Path) -> None:
    world = Path(os.environ.get("PLADA_PHOTO_CACHE", tmp_path / "photo"))
    pool = build_photo_world(Path(str(SOURCE)), world, log=lambda _m: None)
    index = open_feature_index(pool)
    if index is None or not index.pretrained:
        index = build_pretrained_index(pool, device=CPU)
    assert index.info["images_per_s"] > 100
    tdir = world / "tasks" / "flowers5"
    classes = json.loads((tdir / "task.json").read_text())["classes"]
    with np.load(tdir / "train.npz") as z:
        x, y = z["x"], z["y"]
    with np.load(tdir / "test.npz") as z:
        xt, yt = z["x"], z["y"]
    spec = TaskSpec(name="flowers5", classes=classes, pool_id=pool.name, keep=0.05)
    res = run_pipeline(pool, x, y, spec, version=1, device=CPU)
    m = res.metrics
    assert m["teacher"]["arch"] == "probe" and m["validation"]["proxy_student"]["arch"] == "probe"
    assert m["teacher"]["val_accuracy"] > 0.6 and len(m["validation"]["candidates"]) == 6
    energy = next(c for c in m["validation"]["candidates"] if c["label"] == "energy")
    assert m["validation"]["predicted_client_accuracy"] >= energy["val_accuracy"]
    metrics = train_student(
        res.payload, pool, tmp_path / "run", TrainConfig(head_only=True), eval_split=(xt, yt), payload_bytes=res.data
    )
    # the client test split: a head-only student keeps most of what the teacher knows
    assert metrics["test_accuracy"] > 0.55, metrics
    assert abs(metrics["test_accuracy"] - m["validation"]["predicted_client_accuracy"]) < 0.1
