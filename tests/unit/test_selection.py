"""Scoring and the keep rule: energy, Safety-Net quotas, budgets."""

from __future__ import annotations

import numpy as np
import pytest

from plada.server.pipeline import scoring
from plada.server.pipeline.selection import (
    ScoreInputs,
    create_selector,
    largest_fitting,
    list_selectors,
    safety_net_quotas,
    select,
)


def test_energy_is_negative_logsumexp() -> None:
    z = np.array([[0.0, 0.0], [10.0, -10.0], [1000.0, 1000.0]])
    e = scoring.energy(z)
    assert np.allclose(e[:2], [-np.log(2.0), -(10 + np.log1p(np.exp(-20)))])
    assert np.isfinite(e[2]) and np.isclose(e[2], -(1000 + np.log(2)))


@pytest.mark.parametrize("name", ["energy", "entropy", "msp", "opposite-energy", "random"])
def test_every_selector_scores_every_item(name: str) -> None:
    z = np.random.default_rng(0).normal(size=(50, 4))
    s = create_selector(name)(ScoreInputs(logits=z, seed=1))
    assert s.shape == (50,) and np.isfinite(s).all()


def test_registry_lists_and_refuses_unknown() -> None:
    assert {"energy", "random"} <= set(list_selectors())
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        create_selector("nope")


def test_energy_selector_keeps_the_confident_items() -> None:
    z = np.zeros((10, 3))
    z[[2, 7], 0] = 20.0
    kept = select(create_selector("energy")(ScoreInputs(logits=z)), z.argmax(1), 2, n_classes=3)
    assert list(kept) == [2, 7]


@pytest.mark.parametrize(
    ("counts", "budget", "alpha", "share", "expected"),
    [
        ([100, 100, 0], 10, 0.5, 1.0, [5, 5, 0]),
        ([400, 100, 0], 30, 0.5, 1.0, [20, 10, 0]),  # √400 : √100 = 2 : 1
        ([400, 100, 0], 30, -0.2, 0.0, [0, 0, 0]),  # no share → no quotas
        ([3, 1000], 100, 0.0, 1.0, [3, 50]),  # capped by N_c
        ([0, 0], 10, 0.5, 1.0, [0, 0]),
    ],
)
def test_safety_net_quotas(counts: list[int], budget: int, alpha: float, share: float, expected: list[int]) -> None:
    assert safety_net_quotas(np.array(counts), budget, alpha=alpha, share=share).tolist() == expected


def test_select_with_safety_net_covers_rare_classes_and_keeps_budget() -> None:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(1000) < 0.02, 1, 0)
    scores = np.where(labels == 1, 5.0, 0.0) + rng.random(1000)  # class 1 always ranks last
    plain = select(scores, labels, 100, n_classes=2)
    net = select(scores, labels, 100, n_classes=2, alpha=0.0, share=0.5)
    assert (labels[plain] == 1).sum() == 0
    assert (labels[net] == 1).sum() == min(25, (labels == 1).sum()) and len(net) == 100
    assert len(np.unique(net)) == 100


@pytest.mark.parametrize("budget", [0, 1, 999, 1000, 1001])
def test_select_budget_limits(budget: int) -> None:
    scores = np.arange(1000.0)
    assert len(select(scores, np.zeros(1000, np.int64), budget, n_classes=1)) == min(budget, 1000)


@pytest.mark.parametrize("max_bytes", [9, 10, 11, 500, 10_000])
def test_largest_fitting_never_exceeds_budget(max_bytes: int) -> None:
    size = lambda k: 10 + 3 * k  # noqa: E731
    k, b = largest_fitting(1000, size, max_bytes)
    assert b <= max_bytes or k == 0
    if max_bytes >= 10:
        assert (k == min(1000, (max_bytes - 10) // 3) and size(k + 1) > max_bytes) or k == 1000
