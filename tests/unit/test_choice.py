"""Selection beyond energy: feature selectors, diversity, exclusion, leakage audit, cached features, and the
server-side validation that picks among candidates (real torch training on a tiny real pool)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from plada.server.pipeline.features import build_feature_index, open_feature_index
from plada.server.pipeline.leakage import audit_leakage
from plada.server.pipeline.run import finish, prepare, run_pipeline
from plada.server.pipeline.selection import (
    ScoreInputs,
    at_risk,
    create_selector,
    diversified_order,
    reachable,
    rescored,
    select,
)
from plada.server.pipeline.validate import (
    DEFAULT_CANDIDATES,
    Candidate,
    Trial,
    choose,
    shortlist,
    wilson_interval,
)
from plada.shared.errors import InvalidSpecError, PoolError
from plada.shared.pool import Pool, write_array_pool
from plada.shared.schemas import TaskSpec

CPU = torch.device("cpu")


def _domain_images(n: int, domain: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Domain 0: a bright horizontal bar whose row encodes the class; domain 1: vertical bars (other task)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 16, 16), dtype=np.uint8)
    y = rng.integers(0, 4, n)
    if domain == 0:
        x[np.arange(n), 2 + 3 * y, :] = 255
    else:
        x[np.arange(n), :, 2 + 3 * y] = 255
    return x, y


@pytest.fixture(scope="module")
def two_domain_pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    """1,000 target-domain items then 3,000 of another domain; groups = domain × class (like synset folders)."""
    xa, ya = _domain_images(1_000, 0, 0)
    xb, yb = _domain_images(3_000, 1, 1)
    x = np.concatenate([xa, xb])
    groups = np.concatenate([ya, 4 + yb]).astype(np.int32)
    keys = [f"a/{i}" for i in range(1_000)] + [f"b/{i}" for i in range(3_000)]
    return write_array_pool(tmp_path_factory.mktemp("pool") / "p", "two", x, keys, groups=groups)


def _spec(**kw: object) -> TaskSpec:
    base = {"name": "bars", "classes": ["a", "b", "c", "d"], "pool_id": "two", "teacher": {"epochs": 2}}
    return TaskSpec.model_validate(base | kw)


def test_feature_selectors_find_the_target_domain_where_energy_is_fooled() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(0, 1, (200, 8)) + 3.0  # the target domain sits around +3
    pool_f = np.concatenate([rng.normal(0, 1, (300, 8)) + 3.0, rng.normal(0, 1, (700, 8)) - 3.0])
    logits = np.zeros((1_000, 4))
    logits[300:, 0] = 9.0  # the teacher is confidently wrong on the other domain: lowest energy there
    inputs = ScoreInputs(logits=logits, features=pool_f, target_features=target, seed=0)
    for name in ("domain", "knn"):
        kept = select(create_selector(name)(inputs), logits.argmax(1), 200, n_classes=4)
        assert (kept < 300).mean() > 0.95, name
    kept = select(create_selector("energy")(inputs), logits.argmax(1), 200, n_classes=4)
    assert (kept >= 300).all()
    with pytest.raises(ValueError, match="needs pool and target features"):
        create_selector("knn")(ScoreInputs(logits=logits))


def test_diversified_order_spreads_over_strata_within_the_relevant_items() -> None:
    n = 1_000
    scores = np.arange(n, dtype=np.float64)  # item i is the i-th best
    labels = np.zeros(n, dtype=np.int64)
    strata = np.repeat(np.arange(10), 100).astype(np.int32)  # the 100 best all sit in stratum 0
    order = diversified_order(scores, labels, strata, budget=20, breadth=50)
    assert np.bincount(strata[order[:20]]).tolist() == [2] * 10  # two from each stratum, not 20 from one
    assert sorted(order.tolist()) == list(range(n))
    narrow = diversified_order(scores, labels, strata, budget=20, breadth=10)[:20]
    assert (narrow < 200).all() and np.bincount(strata[narrow]).tolist() == [10, 10]  # only the 10·B best
    plain = select(scores, labels, 20, n_classes=1)
    assert len(np.unique(strata[plain])) == 1
    asked: list[np.ndarray] = []  # strata given as a function: only the breadth·B best are asked for

    def lookup(rows: np.ndarray) -> np.ndarray:
        asked.append(rows)
        return strata[rows]

    np.testing.assert_array_equal(
        diversified_order(scores, labels, lookup, budget=20, breadth=10),
        order_10 := (diversified_order(scores, labels, strata, budget=20, breadth=10)),
    )
    assert len(asked) == 1 and sorted(asked[0].tolist()) == list(range(200)) and len(order_10) == n


def test_reachable_rows_reach_down_every_label_and_rescoring_ranks_it_first() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(1_000)
    labels = (np.arange(1_000) % 10 == 0).astype(np.int64)  # label 1 is rare: 100 items
    scores[labels == 1] += 1.0  # and ranked after every label-0 item
    rows = reachable(scores, labels, 20, factor=3.0)
    order = np.argsort(scores, kind="stable")
    assert set(order[:60]) <= set(rows.tolist())  # the best 3·B overall
    rare = order[labels[order] == 1][:30]
    assert set(rare) <= set(rows.tolist()) and len(rows) == 90  # and the best 3·B / 2 of the rare label
    assert (np.diff(rows) > 0).all()
    fine = -np.arange(len(rows), dtype=np.float64)  # the exact scores reverse the shortlist's order
    out = rescored(scores, rows, fine)
    np.testing.assert_array_equal(np.argsort(out, kind="stable")[: len(rows)], rows[::-1])
    rest = np.setdiff1d(np.arange(1_000), rows)
    np.testing.assert_array_equal(np.argsort(out[rest], kind="stable"), np.argsort(scores[rest], kind="stable"))
    assert len(reachable(scores, labels, 0, factor=3.0)) == 0
    np.testing.assert_array_equal(rescored(scores, rows[:0], fine[:0]), scores)


def test_rescoring_the_rows_at_risk_gives_the_exact_selection() -> None:
    rng = np.random.default_rng(4)
    n, count = 20_000, 400
    labels = rng.integers(0, 8, n)
    exact = rng.random(n)
    estimate = exact - 0.1 + 0.03 * rng.normal(size=n)  # biased to look better, and noisy
    want = select(exact, labels, count, n_classes=8, share=1.0, alpha=0.0)
    rows = reachable(estimate, labels, count, factor=1.0)
    first = select(rescored(estimate, rows, exact[rows]), labels, count, n_classes=8, share=1.0, alpha=0.0)
    assert len(np.setdiff1d(want, first)) > 0  # the estimate's own shortlist misses some
    for _ in range(10):
        more = at_risk(estimate, labels, rows, exact[rows], count)
        if not len(more):
            break
        rows = np.union1d(rows, more)
    assert not len(at_risk(estimate, labels, rows, exact[rows], count))
    got = select(rescored(estimate, rows, exact[rows]), labels, count, n_classes=8, share=1.0, alpha=0.0)
    np.testing.assert_array_equal(got, want)
    assert len(rows) < n // 4  # a fraction of the pool is rescored, not all of it


def test_select_never_returns_items_left_out_of_the_order() -> None:
    scores = np.arange(100, dtype=np.float64)
    labels = np.arange(100) % 3
    order = np.argsort(scores)[10:]  # the 10 best are excluded
    for share in (0.0, 1.0):
        kept = select(scores, labels, 30, n_classes=3, share=share, alpha=0.0, order=order)
        assert len(kept) == 30 and kept.min() >= 10


def test_choose_prefers_accuracy_then_bytes_among_near_ties() -> None:
    idx = np.arange(3)
    trials = [
        Trial(Candidate("energy"), idx, 900, 0.70),
        Trial(Candidate("random"), idx, 800, 0.801),
        Trial(Candidate("domain"), idx, 500, 0.798),
        Trial(Candidate("knn"), idx, 400, 0.75),
    ]
    assert choose(trials).candidate.selector == "domain"  # within 0.005 of the best and smaller
    assert choose(trials, tolerance=0.0).candidate.selector == "random"


def test_a_screen_shortlists_what_choose_would_pick_then_the_best_screens() -> None:
    screened, n_bytes = [0.800, 0.803, 0.700, 0.790], [100, 300, 50, 80]
    assert shortlist(screened, n_bytes, 1) == [0]  # within 0.5 point of the best, and the smaller payload
    assert shortlist(screened, n_bytes, 2) == [0, 1]
    assert shortlist(screened, n_bytes, 9) == [0, 1, 2, 3]
    trials = [
        Trial(Candidate("energy"), np.arange(3), 10, 0.9, confirmed=False),
        Trial(Candidate("random"), np.arange(3), 20, 0.5),
    ]
    assert choose(trials).candidate.selector == "random"  # a screen's accuracy never competes with the client's probe


def test_leakage_audit_finds_exact_and_near_copies(two_domain_pool: Pool) -> None:
    pool = two_domain_pool
    fresh, _ = _domain_images(50, 0, 99)
    exact = pool.batch(np.arange(0, 10))[..., 0]
    near = pool.batch(np.arange(10, 17))[..., 0].astype(np.int16) + 2  # a faint brightness change
    x = np.concatenate([fresh, exact, np.clip(near, 0, 255).astype(np.uint8)])
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731 - pixels as features
    rep = audit_leakage(pool, x, pool_features=flat(pool.batch(np.arange(len(pool)))), target_features=flat(x))
    assert rep.exact == 10 and rep.near == 7
    assert set(range(17)) <= set(rep.pool_indices.tolist())
    assert rep.as_metrics(excluded=True)["pool_items_flagged"] == len(rep.pool_indices)


def test_feature_index_is_built_atomically_and_refused_when_stale(two_domain_pool: Pool) -> None:
    index = build_feature_index(two_domain_pool, "t", epochs=1, train_items=800)
    assert index.features.shape == (len(two_domain_pool), index.dim) and index.features.dtype == np.float16
    assert not list((two_domain_pool.root / "features").glob(".*tmp*"))
    again = open_feature_index(two_domain_pool, "t")
    assert again is not None and again.model_id == index.model_id
    emb = index.embed(two_domain_pool.batch(np.arange(5)), device=CPU)
    assert np.allclose(emb, np.asarray(index.features[:5], dtype=np.float32), atol=0.05)
    info_path = index.root / "index.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(info | {"pool_id": "0" * 64}))
    try:
        with pytest.raises(PoolError, match="rebuild it"):
            open_feature_index(two_domain_pool, "t")
    finally:
        info_path.write_text(json.dumps(info))


def test_auto_validates_every_candidate_and_ships_the_best(two_domain_pool: Pool) -> None:
    if open_feature_index(two_domain_pool, "default") is None:
        build_feature_index(two_domain_pool, "default", epochs=1, train_items=800)
    x, y = _domain_images(300, 0, 7)
    res = run_pipeline(two_domain_pool, x, y, _spec(keep=0.05), version=1)
    v = res.metrics["validation"]
    labels = [c["label"] for c in v["candidates"]]
    assert labels == [c.label for c in DEFAULT_CANDIDATES]
    best = max(c["val_accuracy"] for c in v["candidates"])
    chosen = next(c for c in v["candidates"] if c["label"] == v["chosen"])
    assert chosen["val_accuracy"] >= best - 0.005 and v["predicted_client_accuracy"] == pytest.approx(
        chosen["val_accuracy"], abs=1e-4
    )
    assert res.metrics["selection"]["mode"] == "auto" and res.metrics["selection"]["label"] == v["chosen"]
    assert res.metrics["teacher"]["features"].startswith("index default")
    assert v["n_val"] == res.metrics["teacher"]["n_val"] > 0 and "never the client's test data" in v["split"]
    lo, hi = v["predicted_interval_95"]
    assert lo <= v["predicted_client_accuracy"] <= hi and lo < hi
    assert (lo, hi) == pytest.approx(wilson_interval(v["predicted_client_accuracy"], v["n_val"]), abs=1e-4)
    # the target domain is the first 1,000 items: the winner must have found it
    assert (res.payload.indices < 1_000).mean() > 0.9


def test_probe_teacher_scores_from_cached_features_and_excludes_duplicates(two_domain_pool: Pool) -> None:
    if open_feature_index(two_domain_pool, "default") is None:
        build_feature_index(two_domain_pool, "default", epochs=1, train_items=800)
    fresh, yf = _domain_images(300, 0, 8)
    dup_idx = np.arange(100, 140)
    x = np.concatenate([fresh, two_domain_pool.batch(dup_idx)[..., 0]])
    y = np.concatenate([yf, np.asarray(two_domain_pool.manifest.groups)[dup_idx] % 4])
    spec = _spec(
        keep=0.2,
        teacher={"arch": "probe"},
        selector={"name": "domain", "exclude_duplicates": True, "validate_candidates": False},
    )
    res = run_pipeline(two_domain_pool, x, y, spec, version=1)
    m = res.metrics
    assert m["teacher"]["arch"] == "probe" and m["teacher"]["epochs"] is None
    assert m["leakage"]["exact_duplicates"] == 40 and m["leakage"]["excluded"] is True
    assert not set(dup_idx.tolist()) & set(res.payload.indices.tolist())
    assert m["validation"]["candidates"] == [] and m["validation"]["predicted_client_accuracy"] is None
    assert m["validation"]["predicted_interval_95"] is None


def test_probe_without_index_and_unknown_selector_are_spec_errors(tmp_path: object) -> None:
    x, _ = _domain_images(200, 0, 3)
    bare = write_array_pool(tmp_path / "bare", "bare", x, [f"k{i}" for i in range(200)])  # type: ignore[operator]
    xt, yt = _domain_images(80, 0, 4)
    with pytest.raises(InvalidSpecError, match="pool embed"):
        run_pipeline(bare, xt, yt, _spec(keep=0.1, teacher={"arch": "probe"}), version=1)
    with pytest.raises(InvalidSpecError, match="unknown selector"):
        run_pipeline(bare, xt, yt, _spec(keep=0.1, selector={"name": "nope"}), version=1)


def test_far_out_of_distribution_task_is_flagged(two_domain_pool: Pool) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, (600, 16, 16), dtype=np.uint8)  # noise with random labels: nothing to learn
    y = rng.integers(0, 4, 600)
    spec = _spec(keep=0.05, selector={"name": "random"})
    res = run_pipeline(two_domain_pool, x, y, spec, version=1)
    assert res.metrics["warnings"] and "far below" in res.metrics["warnings"][0]


@pytest.mark.parametrize(
    ("p", "n", "lo", "hi"),
    [(0.8, 120, 0.7196, 0.8618), (0.5, 10, 0.2366, 0.7634), (1.0, 50, 0.9286, 1.0), (0.0, 30, 0.0, 0.1135)],
)
def test_the_predicted_accuracy_interval_is_wilsons(p: float, n: int, lo: float, hi: float) -> None:
    """Reference values: the roots of (p - x)² = z² x (1 - x) / n, z = 1.96, solved by numpy.roots, not by the
    closed form under test; the interval narrows as the validation split grows."""
    assert wilson_interval(p, n) == pytest.approx((lo, hi), abs=1e-4)
    a, b = wilson_interval(0.8, 1200)
    assert 0.7196 < a < 0.8 < b < 0.8618
    assert wilson_interval(0.7, 0) == (0.0, 1.0)


def test_a_candidates_options_reach_its_selector(two_domain_pool: Pool) -> None:
    """A candidate's ``options`` (here kNN's k) change its scores and so its selection; before, every
    candidate of one selector silently shared the default options."""
    if open_feature_index(two_domain_pool, "default") is None:
        build_feature_index(two_domain_pool, "default", epochs=1, train_items=800)
    x, y = _domain_images(300, 0, 7)
    spec = _spec(keep=0.05)
    prep = prepare(two_domain_pool, x, y, spec)
    default, k1 = Candidate("knn"), Candidate("knn", options={"k": 1})
    np.testing.assert_array_equal(prep.scores_of(default), create_selector("knn")(prep.inputs))
    np.testing.assert_array_equal(prep.scores_of(k1), create_selector("knn", k=1)(prep.inputs))
    assert not np.array_equal(prep.scores_of(default), prep.scores_of(k1))
    res = finish(prep, spec, version=1, candidates=[default, k1])
    kept = {b.candidate.label: set(b.payload.indices.tolist()) for b in res.built}
    assert list(kept) == ["knn", "knn (k=1)"] and kept["knn"] != kept["knn (k=1)"]


def test_a_validation_split_too_small_to_choose_says_so() -> None:
    import numpy as np

    from plada.server.pipeline.validate import Candidate, Trial, undecided_warning

    def trial(label: str, acc: float) -> Trial:
        return Trial(Candidate(label), np.arange(3), 10, acc)

    close = [trial("energy", 0.71), trial("random", 0.66)]
    (w,) = undecided_warning(close, 24)
    assert "validation has 24 images" in w and "cannot tell 'energy' from 'random'" in w and "more images" in w
    assert undecided_warning(close, 1000) == []  # ±3 points: close candidates are close in fact
    assert undecided_warning([trial("energy", 0.9), trial("random", 0.4)], 24) == []  # clearly apart
    assert undecided_warning(close[:1], 24) == []
