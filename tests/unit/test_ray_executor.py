"""The Ray executor on a local Ray (ray.init(num_cpus=2)) gives the local executor's scores and selection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.run import run_pipeline
from plada.server.pipeline.teacher import score_pool, train_teacher
from plada.shared.pool import Pool, write_array_pool
from plada.shared.schemas import TaskSpec, TeacherOptions

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_pool(pool: Pool, tmp_path_factory: pytest.TempPathFactory) -> Pool:
    """5,000 real mini-world items from all three sources (fashion, animals, MNIST)."""
    idx = np.r_[np.arange(0, 60_000, 20), np.arange(60_000, 65_000, 5), np.arange(65_000, 70_000, 5)]
    out = tmp_path_factory.mktemp("ray") / "pool"
    return write_array_pool(out, "small", pool.batch(idx), [f"i{i}" for i in idx], groups=pool.manifest.groups[idx])


def test_ray_scores_match_local_item_for_item(local_ray: None, small_pool: Pool, world_dir: Path) -> None:
    with np.load(world_dir / "tasks" / "digits" / "train.npz") as z:
        x, y = z["x"], z["y"]
    teacher = train_teacher(x, y, 10, TeacherOptions(epochs=1), image_shape=small_pool.image_shape, device=CPU)
    z_local, f_local = score_pool(teacher, small_pool, chunk=1024, config=RunConfig(executor="local"))
    z_ray, f_ray = score_pool(teacher, small_pool, chunk=1024, config=RunConfig(executor="ray"))
    assert z_ray.shape == z_local.shape == (len(small_pool), 10)
    np.testing.assert_allclose(z_ray, z_local, rtol=0, atol=1e-4)
    assert f_local is not None and f_ray is not None
    np.testing.assert_allclose(f_ray.astype(np.float32), f_local.astype(np.float32), rtol=0, atol=2e-3)
    assert (z_ray.argmax(1) == z_local.argmax(1)).all()


def test_ray_pipeline_publishes_the_same_payload(
    local_ray: None,
    small_pool: Pool,
    world_dir: Path,
    task_classes: dict[str, list[str]],
) -> None:
    with np.load(world_dir / "tasks" / "digits" / "train.npz") as z:
        x, y = z["x"], z["y"]
    spec = TaskSpec.model_validate(
        {
            "name": "digits",
            "classes": task_classes["digits"],
            "pool_id": "small",
            "keep": 0.05,
            "teacher": {"epochs": 1},
            "selector": {"name": "energy", "safety_net_share": 0.5, "validate_candidates": False},
        }
    )
    results = {}
    for executor in ("local", "ray"):
        results[executor] = run_pipeline(small_pool, x, y, spec, version=1, config=RunConfig(executor=executor))
    local, on_ray = results["local"], results["ray"]
    assert np.array_equal(on_ray.payload.indices, local.payload.indices)
    assert np.array_equal(on_ray.payload.labels, local.payload.labels)
    assert on_ray.sha256 == local.sha256 and len(local.payload) == 250


def test_streamed_feature_passes_on_ray_equal_local(local_ray: None, tmp_path: Path) -> None:
    """The passes over a feature index (teacher logits, the survey, the domain classifier, strata) run their
    blocks as Ray tasks that map the index file themselves; block for block, the local answers (to the last
    bit of a float32 sum: a Ray worker's BLAS runs on one thread, and sums in another order)."""
    from plada.server.pipeline import blocks, leakage, scoring
    from plada.server.pipeline.clusters import feature_strata
    from plada.server.pipeline.teacher import pool_logits
    from plada.shared.probe import fit_linear_probe

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 24))[rng.integers(0, 40, 20_000)] + 0.4 * rng.normal(size=(20_000, 24))
    np.save(tmp_path / "features.npy", rows.astype(np.float16))
    feats = np.load(tmp_path / "features.npy", mmap_mode="r")
    uploads = np.asarray(feats[:200], np.float32) + 0.05 * rng.normal(size=(200, 24))
    labels = np.arange(200) % 4
    local = blocks.Streaming(block_bytes=64 << 10)
    on_ray = blocks.Streaming(block_bytes=64 << 10, executor="ray")
    probe = fit_linear_probe(uploads, labels, 4)
    cfg = {ex: RunConfig(executor=ex, block_bytes=64 << 10) for ex in ("local", "ray")}  # type: ignore[arg-type]
    np.testing.assert_allclose(
        pool_logits(probe, feats, cfg["ray"]), pool_logits(probe, feats, cfg["local"]), rtol=1e-5, atol=1e-5
    )
    self_rows = leakage.self_sample(len(feats), sample=100, seed=0)
    a, b = (
        scoring.survey(feats, uploads, knn_cols=np.arange(0, 200, 2), self_rows=self_rows, stream=s)
        for s in (local, on_ray)
    )
    for field in ("knn", "near_sims", "own"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.near_idx, b.near_idx)
    np.testing.assert_allclose(
        scoring.domain_logit(feats, uploads, negatives=2_000, steps=30, stream=on_ray),
        scoring.domain_logit(feats, uploads, negatives=2_000, steps=30, stream=local),
        rtol=1e-5,
        atol=1e-5,
    )
    same = feature_strata(feats, k=8, stream=on_ray) == feature_strata(feats, k=8, stream=local)
    assert same.mean() > 0.999  # an exact tie between two centres may go either way
