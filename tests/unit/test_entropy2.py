"""entropy-v2's models: what they must get right for clustered selections, checked on the bytes they write."""

from __future__ import annotations

import struct
from math import lgamma, log
from pathlib import Path

import numpy as np
import pytest

from plada.shared.codecs import entropy2
from plada.shared.payload import Payload, decode_payload, encode_payload, read_header
from plada.shared.pool import PoolLayout

POOL_ID = "cd" * 32
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden-v3-clustered.plada"


def _log2_binom(n: int, k: int) -> float:
    return (lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)) / log(2)


def clustered(seed: int = 0, n: int = 200_000, groups: int = 400, k: int = 50) -> tuple[Payload, PoolLayout]:
    """A few dense folders, each mostly one class, plus a thin scatter with random labels (bench/payload.py's
    generator in miniature)."""
    rng = np.random.default_rng(seed)
    size = n // groups
    homes = rng.choice(groups, 20, replace=False)
    dense = np.concatenate([g * size + rng.choice(size, size // 2, replace=False) for g in homes])
    cls = np.repeat(np.arange(20) % k, size // 2)
    cls = np.where(rng.random(len(cls)) < 0.85, cls, rng.integers(0, k, len(cls)))
    thin = np.setdiff1d(rng.choice(n, 1_000, replace=False), dense)
    idx = np.r_[dense, thin]
    lab = np.r_[cls, rng.integers(0, k, len(thin))]
    p = Payload(
        indices=idx,
        labels=lab,
        classes=tuple(f"c{i}" for i in range(k)),
        pool_id=POOL_ID,
        n_pool=n,
        task="clustered",
        version=1,
    )
    return p, PoolLayout.from_groups(np.arange(n) // size)


def test_a_uniform_scatter_collapses_into_one_level() -> None:
    """Per-block counts of a uniform selection are Poisson noise: coding them would cost bytes for nothing."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.3, 5_000)
    level = entropy2.assign_levels(counts, np.full(5_000, 650))
    assert len(np.unique(level)) == 1


def test_dense_folders_get_their_own_level() -> None:
    counts = np.zeros(1_000, np.int64)
    counts[::50] = 400  # 20 dense blocks of 650
    counts[1::3] += 1  # thin scatter
    level = entropy2.assign_levels(counts, np.full(1_000, 650))
    dense = counts >= 400
    assert len(np.unique(level[dense])) == 1 and not np.isin(level[~dense], level[dense]).any()


def test_uniform_selection_costs_the_bound() -> None:
    rng = np.random.default_rng(1)
    n, keep, k = 1_000_000, 5_000, 10
    p = Payload(
        indices=rng.choice(n, keep, replace=False),
        labels=rng.integers(0, k, keep),
        classes=tuple("abcdefghij"),
        pool_id=POOL_ID,
        n_pool=n,
        task="u",
        version=1,
    )
    _, _, body = read_header(encode_payload(p, codec="entropy-v2"))
    c = np.bincount(p.labels, minlength=k) / keep
    bound = (_log2_binom(n, keep) - keep * float((c * np.log2(c)).sum())) / 8
    assert bound <= body <= 1.02 * bound


def test_clustered_selection_beats_v1_and_the_paper_codec() -> None:
    p, layout = clustered()
    sizes = {c: read_header(encode_payload(p, codec=c, layout=layout))[2] for c in ("paper-v1", "entropy-v1")}
    data = encode_payload(p, codec="entropy-v2", layout=layout)
    header, _, body = read_header(data)
    assert header["codec"]["labels"] == "dominant" and header["codec"]["block_size"] == 0
    assert body < 0.9 * sizes["entropy-v1"] and body < 0.75 * sizes["paper-v1"], (body, sizes)
    q = decode_payload(data, layout=layout)
    assert np.array_equal(q.indices, p.indices) and np.array_equal(q.labels, p.labels)


def test_noise_labels_of_many_classes_skip_the_count_table() -> None:
    """With 1,000 classes a count table for a few hundred noisy labels costs more than it saves."""
    p, layout = clustered(k=1_000)
    data = encode_payload(p, codec="entropy-v2", layout=layout)
    header, pos, _ = read_header(data)
    (prelude,) = struct.unpack_from("<I", data, pos)
    assert header["codec"]["labels"] == "dominant"
    assert prelude & ~(1 << 31) < 200, prelude  # with count tables it is ~400 bytes
    q = decode_payload(data, layout=layout)
    assert np.array_equal(q.labels, p.labels)


@pytest.mark.parametrize(
    ("n", "idx"),
    [
        (5_000, np.arange(5_000)),  # every item: levels with density 1
        (5_000, np.arange(1_000, 1_256)),  # exactly one full block of 256
        (5_000, np.array([4_999])),
        (5_000, np.zeros(0, np.int64)),
        (1, np.array([0])),
        (70_000, np.r_[np.arange(0, 60_000, 7), np.arange(65_000, 65_500)]),
    ],
)
def test_round_trip_edges(n: int, idx: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    p = Payload(
        indices=idx,
        labels=(idx // 700) % 3 if len(idx) else rng.integers(0, 3, 0),
        classes=("a", "b", "c"),
        pool_id=POOL_ID,
        n_pool=n,
        task="e",
        version=1,
    )
    for layout in (None, PoolLayout.from_groups(np.arange(n) // 1_000)):
        q = decode_payload(encode_payload(p, codec="entropy-v2", layout=layout), layout=layout)
        assert np.array_equal(q.indices, p.indices) and np.array_equal(q.labels, p.labels)


def test_clustered_golden_file_is_stable() -> None:
    """Pins the v2 models that the 7-item golden payload never reaches (levels, dense blocks, thin labels)."""
    p, _ = clustered(seed=3, n=20_000, groups=40, k=5)
    data = encode_payload(p, codec="entropy-v2")
    assert read_header(data)[0]["codec"]["labels"] == "dominant"
    assert GOLDEN.read_bytes() == data
    q = decode_payload(GOLDEN.read_bytes())
    assert np.array_equal(q.indices, p.indices) and np.array_equal(q.labels, p.labels)
