"""The linear probe both sides fit: teacher, proxy students and head-only clients."""

from __future__ import annotations

import numpy as np
import pytest

from plada.shared.probe import LinearProbe, fit_linear_probe


def _blobs(
    n: int, k: int, d: int, sep: float, seed: int, draw: int = 0, weights: list[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes: the centres depend on ``seed`` only, the sample on ``draw`` (fresh data, same task)."""
    centres = np.random.default_rng(seed).normal(size=(k, d)) * sep
    rng = np.random.default_rng(1000 + draw)
    y = rng.choice(k, size=n, p=weights)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_probe_learns_separable_classes_and_round_trips() -> None:
    x, y = _blobs(600, 4, 32, 0.6, 0)
    xt, yt = _blobs(600, 4, 32, 0.6, 0, draw=1)
    probe = fit_linear_probe(x, y, 4)
    assert probe.accuracy(xt, yt) > 0.9
    again = LinearProbe.from_arrays(probe.as_arrays())
    np.testing.assert_allclose(again.logits(xt), probe.logits(xt), rtol=1e-5)
    assert probe.l2 in (1e-2, 1e-1, 1.0) and set(probe.info["cv_balanced_accuracy"]) == {"0.01", "0.1", "1"}


def test_temperature_calibrates_confidence_on_held_out_folds() -> None:
    """Overlapping classes: raw logits are overconfident or not, but the calibrated mean confidence must be
    close to the accuracy actually reached on fresh data (that is what calibration means)."""
    x, y = _blobs(1500, 3, 20, 0.35, 1)
    probe = fit_linear_probe(x, y, 3)
    xf, yf = _blobs(3000, 3, 20, 0.35, 1, draw=1)
    z = probe.logits(xf)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, acc = float(p.max(1).mean()), float((p.argmax(1) == yf).mean())
    assert abs(conf - acc) < 0.05, (conf, acc, probe.temperature)
    assert probe.temperature != 1.0


def test_class_balance_protects_a_rare_class() -> None:
    x, y = _blobs(1200, 3, 16, 0.3, 2, weights=[0.9, 0.05, 0.05])
    xt, yt = _blobs(3000, 3, 16, 0.3, 2, draw=1)

    def balanced_acc(p: LinearProbe) -> float:
        pred = p.predict(xt)
        return float(np.mean([(pred[yt == c] == c).mean() for c in range(3)]))

    assert balanced_acc(fit_linear_probe(x, y, 3)) > balanced_acc(fit_linear_probe(x, y, 3, balanced=False)) + 0.03


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "no training rows")],
)
def test_probe_refuses_empty_input(rows: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_linear_probe(rows, labels, 2)


def test_tiny_or_single_class_input_still_fits_without_cross_validation() -> None:
    x = np.asarray([[0.0, 1.0], [1.0, 0.0], [0.0, 1.1]], np.float32)
    probe = fit_linear_probe(x, np.asarray([0, 1, 0]), 3)
    assert probe.info["cv_balanced_accuracy"] == {} and probe.predict(x).tolist() == [0, 1, 0]
    one = fit_linear_probe(x, np.zeros(3, np.int64), 2)
    assert (one.predict(x) == 0).all()


def test_fit_reaches_the_optimum_autograd_agrees_on() -> None:
    """The fit's gradient is written out by hand (for speed): at its solution, autograd's gradient of the same
    objective (class-balanced cross-entropy on standardised rows + L2 on the weights) must vanish. A wrong
    hand-written gradient would stop L-BFGS somewhere else."""
    import torch
    import torch.nn.functional as F

    x, y = _blobs(900, 5, 24, 0.3, 3, weights=[0.4, 0.3, 0.15, 0.1, 0.05])
    lam = 0.05
    probe = fit_linear_probe(x, y, 5, l2=lam, calibrate=False, iters=500)
    xs = torch.from_numpy((x - probe.mu) / probe.sd)
    counts = np.bincount(y, minlength=5)
    sw = torch.from_numpy((len(y) / (5 * counts))[y].astype(np.float32))
    w = torch.from_numpy(probe.weight.copy()).requires_grad_(True)
    b = torch.from_numpy(probe.bias.copy()).requires_grad_(True)
    z = xs @ w + b
    loss = (F.cross_entropy(z, torch.from_numpy(y), reduction="none") * sw).sum() / sw.sum() + lam * w.pow(2).sum()
    loss.backward()  # type: ignore[no-untyped-call]
    assert w.grad is not None and b.grad is not None
    assert float(w.grad.abs().max()) < 1e-3 and float(b.grad.abs().max()) < 1e-3
    assert float(w.detach().abs().max()) > 0.05  # a real solution, not the zero start
