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
from plada.server.pipeline.run import run_pipeline
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
        index = build_pretrained_index(pool)
    # the CPU path runs the backbone through ONNX Runtime (its speed is measured by bench/photo.py, not here:
    # a cached index records the throughput of whatever machine load it was built under)
    assert index.pretrained and index.info["runtime"] == "onnxruntime"
    tdir = world / "tasks" / "flowers5"
    classes = json.loads((tdir / "task.json").read_text())["classes"]
    with np.load(tdir / "train.npz") as z:
        x, y = z["x"], z["y"]
    with np.load(tdir / "test.npz") as z:
        xt, yt = z["x"], z["y"]
    spec = TaskSpec(name="flowers5", classes=classes, pool_id=pool.name, keep=0.05)
    res = run_pipeline(pool, x, y, spec, version=1)
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


def test_a_photo_task_version_page_in_chromium(tmp_path: Path) -> None:
    """flowers5 published through a real server onto the photo pool; its version page in headless Chromium:
    five grids of real photos (alt = pool key · class), the candidates table, the screenshot kept."""
    import shutil

    from harness.local import LocalStack
    from plada.client import PladaClient

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Chromium")
    from playwright.sync_api import sync_playwright

    world = Path(os.environ.get("PLADA_PHOTO_CACHE", tmp_path / "photo"))
    pool = build_photo_world(Path(str(SOURCE)), world, log=lambda _m: None)
    if (index := open_feature_index(pool)) is None or not index.pretrained:
        build_pretrained_index(pool)
    tdir = world / "tasks" / "flowers5"
    classes = json.loads((tdir / "task.json").read_text())["classes"]
    stack = LocalStack(data_dir=tmp_path / "d", pools_dir=world / "pools", log_dir=tmp_path / "l")
    with stack:
        stack.start_server()
        stack.start_worker()
        with PladaClient(stack.url, token=stack.token()) as c:
            spec = {"name": "flowers5", "classes": classes, "pool_id": pool.name, "keep": 0.05}
            job = c.publish(spec, tdir / "train.npz").job.id
            assert c.wait_job(job, timeout=1200).state == "succeeded"
            counts = c.version("flowers5", 1).metrics["selection"]["label_counts"]
        keys = {str(k) for k in pool.manifest.keys}
        artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{stack.url}/tasks/flowers5/versions/1")
            grids = page.locator(".grid[data-class]")
            assert grids.count() == len(classes) == 5
            for c, name in enumerate(classes):
                alts = grids.nth(c).locator("img").evaluate_all("els => els.map(e => e.alt)")
                assert len(alts) == min(counts[c], 24)
                assert all(a.split(" · ")[0] in keys and a.split(" · ")[1] == name for a in alts)
            assert page.locator("#candidates tr").count() == 7
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(artifacts / "version-page-flowers5.png"), full_page=True)
            browser.close()
