"""Pool-wide passes in blocks: the same answers as whole-array arithmetic, with the pages handed back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plada.server.pipeline import blocks, leakage, scoring
from plada.server.pipeline.clusters import assign_strata, feature_strata, strata_centers

SMALL = blocks.Streaming(block_bytes=64 << 10)  # 64 KiB: blocks of 1,024 rows (the floor), many of them


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """5,000 rows of 16 float16 features in 40 clusters, memory-mapped from a .npy like a feature index."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    rows = centres[rng.integers(0, 40, 5_000)] + 0.3 * rng.normal(size=(5_000, 16))
    path = Path(tmp_path_factory.mktemp("blocks")) / "features.npy"
    np.save(path, rows.astype(np.float16))
    return np.load(path, mmap_mode="r")


def _rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_rows_take_and_spill_copy_exactly_and_hand_pages_back(mapped: np.ndarray, tmp_path: Path) -> None:
    assert blocks.is_mapped(mapped) and not blocks.is_mapped(np.zeros(3))
    np.testing.assert_array_equal(blocks.rows(mapped, 100, 300), np.asarray(mapped[100:300], np.float32))
    idx = np.array([4_999, 3, 3, 1_000, 0])
    np.testing.assert_array_equal(blocks.take(mapped, idx), np.asarray(mapped[idx], np.float32))
    sparse = np.array([4_000, 7])  # 80 KB of file a row: read-around off for the gather, then on again
    assert mapped.nbytes / len(sparse) > blocks.SPARSE_GAP
    np.testing.assert_array_equal(blocks.take(mapped, sparse), np.asarray(mapped[sparse], np.float32))
    np.testing.assert_array_equal(blocks.take(mapped, idx), np.asarray(mapped[idx], np.float32))
    got = np.concatenate([b for _, b in blocks.iter_rows(mapped, 64 << 10)])
    np.testing.assert_array_equal(got, np.asarray(mapped, np.float32))
    spilled = blocks.spill((40_000, 256), np.float16, tmp_path)  # 20 MB, unlinked at once
    assert list(tmp_path.iterdir()) == [] and blocks.is_mapped(spilled)
    before = _rss_file_kb()
    spilled[:] = 1.0
    assert _rss_file_kb() - before > 15_000  # written pages are resident …
    blocks.release(spilled)
    assert _rss_file_kb() - before < 2_000  # … until handed back; the data stays
    assert float(spilled.sum(dtype=np.float64)) == 40_000 * 256


def test_streamed_nearest_is_the_exact_search_whichever_side_is_large(mapped: np.ndarray) -> None:
    q = np.random.default_rng(1).normal(size=(30, 16))
    prod = _unit(q) @ _unit(np.asarray(mapped, np.float32)).T
    ref = np.argsort(-prod, axis=1, kind="stable")[:, :4]
    sims, idx = scoring.nearest(mapped, q, k=4, stream=SMALL)  # the pool is the database, five blocks
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(prod, ref, 1), atol=1e-5)
    knn = scoring.knn_similarity(mapped, q, k=3, stream=SMALL)  # the pool is the query side
    np.testing.assert_allclose(knn, np.sort(prod.T, axis=1)[:, -3:].mean(1), atol=1e-5)


def test_one_survey_pass_gives_what_the_three_searches_give(mapped: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    copies = np.asarray(mapped[rng.choice(5_000, 30, replace=False)], np.float32) + 0.01 * rng.normal(size=(30, 16))
    uploads = np.concatenate([copies, rng.normal(size=(30, 16))])  # half near copies of pool rows, half not
    tr = np.arange(0, 60, 3)
    rows = leakage.self_sample(5_000, sample=200, seed=0)
    sv = scoring.survey(mapped, uploads, knn_cols=tr, self_rows=rows, k=5, stream=SMALL)
    np.testing.assert_allclose(sv.knn, scoring.knn_similarity(mapped, uploads[tr], k=5), atol=1e-5)
    sims, idx = scoring.nearest(mapped, uploads, k=1)
    np.testing.assert_array_equal(sv.near_idx, idx[:, 0])
    np.testing.assert_allclose(sv.near_sims, sims[:, 0], atol=1e-5)
    # the same kNN score for any rows, gathered (scattered, in any order) a block at a time
    some = rng.permutation(5_000)[:3_000]
    knn_some = scoring.knn_of_rows(mapped, some, uploads[tr], k=5, block_bytes=SMALL.block_bytes)
    np.testing.assert_allclose(knn_some, sv.knn[some], atol=1e-5)
    _, own = leakage.nearest_other(mapped, sample=200, seed=0)
    np.testing.assert_allclose(sv.own, own, atol=1e-5)
    # rows are only looked up where the audit needs them (above its cosine)
    sv2 = scoring.survey(mapped, uploads, knn_cols=tr, self_rows=rows, index_above=0.999, stream=SMALL)
    hi = sv2.near_sims >= 0.999
    assert 0 < hi.sum() < len(hi)
    assert (sv2.near_idx[hi] == idx[hi, 0]).all() and (sv2.near_idx[~hi] == -1).all()


def test_domain_logit_and_strata_do_not_depend_on_the_block_size(mapped: np.ndarray) -> None:
    target = np.asarray(mapped[:300], np.float32)
    whole = scoring.domain_logit(mapped, target, negatives=2_000, steps=50)
    small = scoring.domain_logit(mapped, target, negatives=2_000, steps=50, stream=SMALL)
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-4)
    every = feature_strata(mapped, k=8)
    np.testing.assert_array_equal(feature_strata(mapped, k=8, stream=SMALL), every)
    some = np.random.default_rng(3).permutation(5_000)[:2_500]  # only the rows asked for, the same strata
    some_strata = assign_strata(mapped, some, strata_centers(mapped, k=8), block_bytes=SMALL.block_bytes)
    np.testing.assert_array_equal(some_strata, every[some])
