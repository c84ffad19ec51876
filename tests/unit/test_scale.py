"""The paper's scale in miniature: a compressed index, and a publish whose memory does not follow the pool.

``bench/scale.py`` publishes on synthetic pools of 1.28M and 14.2M items (docs/benchmarks.md); here the same
synthetic pool at 200,000 items with a full-width float16 index (512 MB), published in 8 MB blocks in a child
process whose peak RSS during the publish is measured. Real photos (scikit-image's) and the real pretrained
backbone, as in ``test_photos.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from plada.server.pipeline.compress import compress_index, replace_with
from plada.server.pipeline.features import build_pretrained_index, open_feature_index
from plada.server.pipeline.run import finish, prepare, run_pipeline
from plada.server.pipeline.selection import select
from plada.server.pipeline.validate import Candidate
from plada.shared.errors import PoolError
from plada.shared.pool import Pool, index_image_folder, open_pool
from plada.shared.schemas import TaskSpec

pytest.importorskip("skimage.data")
from photo_crops import crop_folder, crops, photo

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photo_pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    """120 crops (20 of each of six photos) at 40 px, with a pretrained 1,280-d index at 64 px."""
    root = tmp_path_factory.mktemp("scale")
    pool = index_image_folder(crop_folder(root, 20, 40), root / "pool", "photos")
    build_pretrained_index(pool, image_size=64)
    return pool


def _upload() -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([crops(photo("chelsea"), 20, 56, seed=2), crops(photo("coffee"), 20, 56, seed=3)])
    return x, np.repeat([0, 1], 20)


def test_compressed_index_keeps_the_teacher_and_publishes(photo_pool: Pool) -> None:
    full = open_feature_index(photo_pool)
    assert full is not None and not full.compressed
    small = compress_index(photo_pool, dim=32)
    assert small.name == "default-pca32" and small.compressed
    assert small.features.dtype == np.int8 and small.features.shape == (len(photo_pool), 32)
    assert small.info["compression"]["from_dim"] == 1280 and 0 < small.info["compression"]["explained"] <= 1
    assert small.info["near_duplicates"]["near_duplicate_cosine"] > 0  # calibrated again for the new space
    # the stored rows are the projection of the full rows, to int8 rounding (the rarest values saturate)
    rows = np.asarray(full.features, np.float32)
    np.testing.assert_allclose(small.features, np.clip(small.project(rows), -127, 127), atol=0.51)
    # a probe fitted on full features, lifted onto the stored rows, scores their reconstructions
    from plada.shared.probe import fit_linear_probe

    x, y = _upload()
    f = full.embed(x, device=CPU)
    probe = fit_linear_probe(f, y, 2)
    recon = small.scale * np.asarray(small.features, np.float32) @ small.projection.T  # type: ignore[union-attr]
    np.testing.assert_allclose(small.lift(probe).logits(small.features), probe.logits(recon), rtol=1e-3, atol=1e-3)
    # while its full-width source is on disk, the linear passes read it: the teacher's pool logits and the
    # domain classifier are the uncompressed index's, to float rounding; the survey reads the stored rows
    assert small.full is not None and small.full.root == full.root and small.linear is small.full.features
    spec = TaskSpec.model_validate({"name": "cats", "classes": ["cat", "coffee"], "pool_id": "photos", "keep": 0.25})
    on_full, on_small = prepare(photo_pool, x, y, spec), prepare(photo_pool, x, y, spec, index_name="default-pca32")
    np.testing.assert_allclose(on_small.teacher.logits, on_full.teacher.logits, rtol=1e-4, atol=1e-4)
    domain = Candidate("domain")
    np.testing.assert_allclose(on_small.scores_of(domain), on_full.scores_of(domain), rtol=1e-4, atol=1e-4)
    # the kNN ranking comes from the survey's 32-d rows; the items a keep could reach are scored again on the
    # full-width rows, and the diversity strata are the full rows' own: both selections are the full index's
    every = np.ones(len(photo_pool), dtype=bool)
    for cand in (Candidate("knn", share=1.0, alpha=0.0), Candidate("domain", share=1.0, alpha=0.0, diversity=3.0)):
        for count in (6, 30):
            kept = [
                select(
                    p.scores_at(cand, count),
                    p.labels,
                    count,
                    n_classes=2,
                    share=1.0,
                    alpha=0.0,
                    order=p.order_of(cand, count, every),
                )
                for p in (on_full, on_small)
            ]
            np.testing.assert_array_equal(kept[0], kept[1])
    np.testing.assert_array_equal(
        on_small.strata_of(np.arange(len(photo_pool))), on_full.strata_of(np.arange(len(photo_pool)))
    )
    knn = Candidate("knn")
    rough = np.argsort(on_small.scores_at(knn, 6, refine=False), kind="stable")[:6]
    assert set(rough) != set(np.argsort(on_full.scores_at(knn, 6), kind="stable")[:6])  # the rescoring mattered
    # a byte budget is searched on the projected ranking, then shipped on the rescored one, within the budget
    by_bytes = spec.model_copy(update={"keep": None, "max_bytes": 345})
    knn_quota = [Candidate("knn", share=1.0, alpha=0.0)]
    paid = [finish(p, by_bytes, version=1, candidates=knn_quota) for p in (on_full, on_small)]
    assert len(paid[1].data) <= 345 and len(paid[1].payload) > 6
    np.testing.assert_array_equal(paid[1].payload.indices, paid[0].payload.indices)
    survey_rows = on_small.teacher.pool_features
    assert survey_rows is not None and survey_rows.dtype == np.int8 and survey_rows.shape == (len(photo_pool), 32)
    assert "full width" in on_small.teacher.feature_source
    assert small.index_id != open_feature_index(photo_pool, "default-pca32", full=False).index_id  # type: ignore[union-attr]
    with pytest.raises(PoolError, match="already compressed"):
        compress_index(photo_pool, "default-pca32", dim=8)
    with pytest.raises(PoolError, match="--dim must be"):
        compress_index(photo_pool, dim=1280)
    # made the default, a publish runs on it; the teacher keeps the upload's full features
    replace_with(photo_pool, "default-pca32", keep_as="full")
    pool = open_pool(photo_pool.root)
    index = open_feature_index(pool)
    assert index is not None and index.compressed and index.full is not None and index.full.name == "full"
    res = run_pipeline(pool, x, y, spec, version=1)
    assert len(res.payload) == 30 and res.metrics["teacher"]["arch"] == "probe"
    with pytest.raises(PoolError, match="exists already"):
        replace_with(pool, "full", keep_as="full")


PUBLISH = """
import json, sys, numpy as np, torch
from pathlib import Path
from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.features import open_feature_index
from plada.server.pipeline.run import finish, prepare
from plada.shared.pool import open_pool
from plada.shared.schemas import TaskSpec

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

pool = open_pool(Path(sys.argv[1]))
with np.load(sys.argv[2]) as z:
    x, y = z["x"], z["y"]
open_feature_index(pool).embed(x[:2], device=torch.device("cpu"))  # the backbone, built once per process
config = RunConfig(block_bytes=8 << 20, logits_ram_bytes=0)  # 8 MB blocks; logits spilled to disk
spec = TaskSpec(name="cats", classes=["cat", "coffee"], pool_id=pool.name, keep=0.01)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS: what follows is the publish alone
base = status("VmRSS:")
res = finish(prepare(pool, x, y, spec, config=config), spec, version=1, config=config)
print(json.dumps({"base_mb": base, "peak_mb": status("VmHWM:"), "kept": len(res.payload),
                  "chosen": res.metrics["validation"]["chosen"]}))
"""


def _publish(pool: Pool, upload: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PUBLISH), str(pool.root), str(upload)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kept"] == len(pool) // 100
    return out


@pytest.mark.slow
def test_publish_memory_does_not_follow_the_pool(photo_pool: Pool, tmp_path: Path) -> None:
    """Two synthetic pools, 50,000 and 200,000 items with full-width float16 indexes (122 and 488 MB): the
    publish's peak RSS grows by what the 150,000 extra items need as per-item vectors (scores, labels), not
    by their rows (a pass that kept them resident, or copied the index, would add 366 MB or 732 MB)."""
    from harness.synthetic import synthetic_pool

    full = open_feature_index(photo_pool, "full") or open_feature_index(photo_pool)
    assert full is not None and not full.compressed
    x, y = _upload()
    np.savez(tmp_path / "upload.npz", x=x, y=y)
    grew, index_mb = {}, {}
    for n in (50_000, 200_000):
        pool = synthetic_pool(
            tmp_path / f"synthetic-{n}",
            n,
            300,
            source_rows=np.asarray(full.features),
            source_groups=np.asarray(photo_pool.manifest.groups),
            index_info=full.info,
            backbone=full.root / "backbone.pt",
        )
        index_mb[n] = (pool.root / "features" / "default" / "features.npy").stat().st_size / 2**20
        out = _publish(pool, tmp_path / "upload.npz")
        grew[n] = out["peak_mb"] - out["base_mb"]
    extra_rows_mb = index_mb[200_000] - index_mb[50_000]
    print(f"publish peak RSS growth (MB) {grew} for index MB {index_mb}")
    assert extra_rows_mb > 360
    assert grew[200_000] - grew[50_000] < 0.25 * extra_rows_mb, (grew, index_mb)


def test_a_two_tier_synthetic_pool_is_what_compress_would_make(photo_pool: Pool, tmp_path: Path) -> None:
    """The scale bench's two tiers: full-width float16 rows kept as index ``full``, and ``default`` their
    projection to int8, so the publish streams the linear passes from the one and surveys the other."""
    from harness.synthetic import synthetic_pool

    src = open_feature_index(photo_pool)
    assert src is not None
    if not src.compressed:  # run alone, before the test that makes the compressed default
        src = compress_index(photo_pool, name="tiers-pca16", dim=16, calibrate=False)
    assert src.full is not None and src.projection is not None
    pool = synthetic_pool(
        tmp_path / "two-tier",
        5_000,
        40,
        source_rows=np.asarray(src.features),
        source_groups=np.asarray(photo_pool.manifest.groups),
        index_info=src.info,
        backbone=src.root / "backbone.pt",
        projection=src.projection,
        full_rows=np.asarray(src.full.features),
    )
    index = open_feature_index(pool)
    assert index is not None and index.compressed and index.full is not None and index.full.name == "full"
    rows = np.asarray(index.full.features, np.float32)
    assert rows.shape == (5_000, 1280) and index.features.shape == (5_000, src.dim)
    np.testing.assert_allclose(index.features, np.clip(index.project(rows), -127, 127), atol=0.51)
