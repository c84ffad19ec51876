"""Per-item relevance scores from teacher logits. Convention: LOWER score = kept first."""

from __future__ import annotations

import numpy as np


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def energy(logits: np.ndarray) -> np.ndarray:
    """E(x) = −logsumexp(z) at temperature 1 (PLADA): low energy = in-distribution for the target."""
    return -_logsumexp(logits.astype(np.float64))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Predictive entropy: low = the teacher is sure."""
    p = softmax(logits)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)


def msp(logits: np.ndarray) -> np.ndarray:
    """Negative max softmax probability (so lower is more confident)."""
    return -softmax(logits).max(axis=1)
