"""The payload container: round trips, the paper codec's choice, and every malformed input → PayloadError."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from plada.shared.errors import PayloadCorruptError, PayloadError, PayloadVersionError
from plada.shared.payload import (
    FORMAT_VERSION,
    MAGIC,
    Payload,
    decode_payload,
    encode_payload,
    inspect_payload,
    payload_sha256,
    read_header,
)

POOL_ID = "ab" * 32
DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = {
    "paper-v1": DATA / "golden-v1.plada",
    "entropy-v1": DATA / "golden-v2.plada",
    "entropy-v2": DATA / "golden-v3.plada",
}
CODECS = list(GOLDEN)
FORMAT = {"paper-v1": 1, "entropy-v1": 2, "entropy-v2": 3}


def make(n_pool: int = 10_000, keep: int = 100, k: int = 10, seed: int = 0, **kw: object) -> Payload:
    rng = np.random.default_rng(seed)
    idx = rng.choice(n_pool, size=keep, replace=False)
    return Payload(
        indices=idx,
        labels=rng.integers(0, k, keep),
        classes=tuple(f"c{i}" for i in range(k)),
        pool_id=POOL_ID,
        n_pool=n_pool,
        task="t",
        version=1,
        pool_name="p",
        **kw,
    )  # type: ignore[arg-type]


def golden_payload() -> Payload:
    idx = np.array([0, 3, 4, 100, 999, 1000, 4095], dtype=np.int64)
    return Payload(
        indices=idx,
        labels=np.array([0, 1, 2, 0, 1, 2, 1]),
        classes=("cat", "dog", "émeu"),
        pool_id="0f" * 32,
        n_pool=4096,
        task="golden",
        version=7,
        pool_name="golden-pool",
        meta={"selector": "energy"},
    )


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    ("n_pool", "keep", "k", "layout"),
    [
        (100_000, 50, 10, "delta"),  # very sparse: gaps beat the bitmap
        (10_000, 5_000, 10, "bitmap"),  # dense: the bitmap wins
        (1_000, 0, 2, None),  # empty selection is legal
        (1_000, 1_000, 300, "bitmap"),  # full pool, k > 256 → uint16 labels
        (70_000, 700, 10, None),  # the mini world at 1 %
        (1, 1, 2, None),  # the smallest pool
    ],
)
def test_round_trip(codec: str, n_pool: int, keep: int, k: int, layout: str | None) -> None:
    p = make(n_pool, keep, k)
    data = encode_payload(p, codec=codec)
    q = decode_payload(data, expected_sha256=payload_sha256(data))
    assert np.array_equal(p.indices, q.indices) and np.array_equal(p.labels, q.labels)
    assert q.classes == p.classes and q.pool_id == POOL_ID and q.n_pool == n_pool and q.version == 1
    header, _, _ = read_header(data)
    assert header["codec"]["name"] == codec and data[4] == FORMAT[codec]
    if codec == "paper-v1":
        if layout:
            assert header["codec"]["index"] == layout
        assert header["codec"]["label_dtype"] == ("u2" if k > 256 else "u1")


def test_auto_picks_the_smallest_codec() -> None:
    p = make(100_000, 1_000, 10)
    sizes = {c: len(encode_payload(p, codec=c)) for c in CODECS}
    assert len(encode_payload(p)) == min(sizes.values())
    assert sizes["entropy-v1"] < sizes["paper-v1"] and sizes["entropy-v2"] < sizes["paper-v1"]


@pytest.mark.parametrize(("codec", "fmt"), [("entropy-v1", 1), ("entropy-v2", 1), ("entropy-v2", 2)])
def test_an_older_container_cannot_carry_a_newer_codec(codec: str, fmt: int) -> None:
    data = bytearray(encode_payload(make(), codec=codec))
    data[4] = fmt
    forged = bytes(data[:-32]) + hashlib.sha256(bytes(data[:-32])).digest()
    with pytest.raises(PayloadVersionError, match=f"not valid in a format-{fmt}"):
        decode_payload(forged)


def test_encoding_is_deterministic_and_sorted() -> None:
    p = make()
    shuffled = Payload(
        indices=p.indices[::-1],
        labels=p.labels[::-1],
        classes=p.classes,
        pool_id=POOL_ID,
        n_pool=p.n_pool,
        task="t",
        version=1,
        pool_name="p",
    )
    assert encode_payload(p) == encode_payload(shuffled)
    assert (np.diff(decode_payload(encode_payload(shuffled)).indices) > 0).all()


def test_paper_codec_picks_the_smaller_layout() -> None:
    from plada.shared.codecs import paper

    for keep in (20, 2_000, 9_000):
        p = make(10_000, keep)
        codec, body = paper.encode(p.indices, p.labels, n_pool=10_000, n_classes=10)
        other = "delta" if codec["index"] == "bitmap" else "bitmap"
        # rebuild the other layout by hand and check it is not smaller
        import zstandard

        labels = p.labels.astype(np.uint8).tobytes()
        if other == "bitmap":
            bits = np.zeros(10_000, np.uint8)
            bits[p.indices] = 1
            raw = np.packbits(bits, bitorder="little").tobytes() + labels
        else:
            gaps = np.diff(p.indices, prepend=0)
            raw = gaps.astype(np.uint16 if gaps.max() > 255 else np.uint8).tobytes() + labels
        assert len(body) <= len(zstandard.ZstdCompressor(level=19).compress(raw))


@pytest.mark.parametrize("codec", CODECS)
def test_golden_files_are_stable(codec: str) -> None:
    """Format v1, v2 and v3 bytes are pinned: an old client must read what a new server writes."""
    data = encode_payload(golden_payload(), codec=codec)
    assert GOLDEN[codec].read_bytes() == data
    q = decode_payload(GOLDEN[codec].read_bytes())
    assert q.classes == ("cat", "dog", "émeu") and q.meta == {"selector": "energy"} and q.version == 7
    assert q.indices.tolist() == [0, 3, 4, 100, 999, 1000, 4095]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda d: b"XXXX" + d[4:], PayloadCorruptError, "not a plada payload"),
        (lambda d: d[:4] + bytes([FORMAT_VERSION + 1]) + d[5:], PayloadVersionError, "format version 4"),
        (lambda d: d[:5] + b"\x01" + d[6:], PayloadVersionError, "flags"),
        (lambda d: d + b"\x00", PayloadCorruptError, "trailing"),
        (lambda d: d[:-1], PayloadCorruptError, "truncated|trailing"),
        (lambda d: d[:-32] + bytes(32), PayloadCorruptError, "checksum"),
        (lambda d: b"", PayloadCorruptError, "truncated"),
        (lambda d: d[:6] + struct.pack("<I", 0xFFFFFFFF) + d[10:], PayloadCorruptError, "header length"),
    ],
)
def test_malformed_is_rejected(mutate, error, match) -> None:  # type: ignore[no-untyped-def]
    data = encode_payload(make(), codec="paper-v1")
    with pytest.raises(error, match=match):
        decode_payload(mutate(data))


def _resign(prefix_and_body: bytes) -> bytes:
    return prefix_and_body + hashlib.sha256(prefix_and_body).digest()


def _rebuild(header: bytes, body: bytes) -> bytes:
    return _resign(struct.pack("<4sBBI", MAGIC, 1, 0, len(header)) + header + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize(
    ("header_patch", "match"),
    [
        ({"n_items": 101}, "inflates|holds"),
        ({"n_pool": 0}, "counts out of range"),
        ({"pool_id": "xyz"}, "pool_id"),
        ({"classes": []}, "classes"),
        ({"codec": {"name": "nope"}}, "unknown codec"),
        ({"version": True}, "wrong type"),
        ({"classes": ["a", "b"]}, "out of range"),  # labels 0..9 with two classes
    ],
)
def test_lying_header_with_valid_checksum_is_rejected(header_patch: dict[str, object], match: str) -> None:
    """A correct checksum proves nothing about consistency: the decoder checks the content too."""
    import json

    data = encode_payload(make(), codec="paper-v1")
    header, pos, blen = read_header(data)
    body = data[pos : pos + blen]
    forged = _rebuild(json.dumps(header | header_patch).encode(), body)
    with pytest.raises(PayloadError, match=match):
        decode_payload(forged)


@pytest.mark.parametrize("codec", CODECS)
def test_every_truncation_and_many_bit_flips_raise_payload_error(codec: str) -> None:
    data = encode_payload(make(2_000, 40), codec=codec)
    for n in range(len(data)):
        with pytest.raises(PayloadError):
            decode_payload(data[:n])
    rng = np.random.default_rng(1)
    for pos in rng.choice(len(data) * 8, size=300, replace=False):
        flipped = bytearray(data)
        flipped[pos // 8] ^= 1 << (pos % 8)
        with pytest.raises(PayloadError):
            decode_payload(bytes(flipped))


def test_expected_sha_mismatch() -> None:
    data = encode_payload(make())
    with pytest.raises(PayloadCorruptError, match="content address"):
        decode_payload(data, expected_sha256="0" * 64)


def test_inspect_reports_header_and_counts() -> None:
    data = encode_payload(make(k=3, keep=30))
    info = inspect_payload(data)
    assert info["n_items"] == 30 and info["checksum_ok"] and sum(info["label_counts"]) == 30
    assert info["sha256"] == payload_sha256(data) and info["bytes"] == len(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"indices": [1, 1], "labels": [0, 0]},
        {"indices": [5], "labels": [3]},
        {"indices": [10_000], "labels": [0]},
        {"indices": [1, 2], "labels": [0]},
        {"pool_id": "abc"},
        {"version": 0},
    ],
)
def test_payload_constructor_refuses_misuse(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "indices": [1, 2],
        "labels": [0, 1],
        "classes": ("a", "b", "c"),
        "pool_id": POOL_ID,
        "n_pool": 10_000,
        "task": "t",
        "version": 1,
    }
    with pytest.raises(ValueError):
        Payload(**(base | kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", ["entropy-v1", "entropy-v2"])
def test_group_layout_round_trip_and_guards(codec: str) -> None:
    """Coding in the pool's group order: smaller for group-shaped selections, and only decodable with the pool."""
    from plada.shared.errors import PayloadNeedsPoolError, PoolMismatchError
    from plada.shared.pool import PoolLayout

    rng = np.random.default_rng(3)
    n = 20_000
    groups = rng.integers(0, 50, n)  # interleaved groups: storage order says nothing about them
    layout = PoolLayout.from_groups(groups)
    idx = np.flatnonzero(np.isin(groups, [3, 17]))[::2]  # a selection concentrated in two groups
    labels = np.where(groups[idx] == 3, 0, 1)
    p = Payload(indices=idx, labels=labels, classes=("a", "b"), pool_id=POOL_ID, n_pool=n, task="t", version=1)
    plain = encode_payload(p, codec=codec)
    coded = encode_payload(p, codec=codec, layout=layout)
    assert read_header(coded)[0]["codec"]["layout"] == layout.layout_id
    body = {name: read_header(d)[2] for name, d in (("plain", plain), ("coded", coded))}
    assert body["coded"] < body["plain"] / 2, body
    q = decode_payload(coded, layout=layout)
    assert np.array_equal(q.indices, p.indices) and np.array_equal(q.labels, p.labels)
    with pytest.raises(PayloadNeedsPoolError):
        decode_payload(coded)
    other = PoolLayout.from_groups(rng.integers(0, 50, n))
    with pytest.raises(PoolMismatchError):
        decode_payload(coded, layout=other)
    info = inspect_payload(coded)
    assert info["checksum_ok"] and info["decoded"] is False and "label_counts" not in info
    assert inspect_payload(coded, layout=layout)["decoded"] is True


@pytest.mark.parametrize("with_layout", [False, True])
def test_priority_tiers_round_trip_and_prefix(with_layout: bool) -> None:
    from plada.shared.pool import PoolLayout

    rng = np.random.default_rng(5)
    n, keep = 30_000, 900
    idx = rng.choice(n, keep, replace=False)
    tiers = rng.integers(0, 3, keep)
    p = Payload(
        indices=idx,
        labels=rng.integers(0, 5, keep),
        classes=tuple("abcde"),
        pool_id=POOL_ID,
        n_pool=n,
        task="t",
        version=1,
        tiers=tiers,
    )
    layout = PoolLayout.from_groups(rng.integers(0, 30, n)) if with_layout else None
    data = encode_payload(p, layout=layout)  # auto: only the entropy codec can carry tiers
    header = read_header(data)[0]
    assert header["codec"]["name"] in ("entropy-v1", "entropy-v2") and header["n_tiers"] == 3
    q = decode_payload(data, layout=layout)
    assert q.tiers is not None and np.array_equal(q.tiers, p.tiers) and np.array_equal(q.labels, p.labels)
    first = q.prefix(0)
    assert len(first) == int((tiers == 0).sum()) and set(first.indices) <= set(q.indices)
    assert len(q.prefix(2)) == keep
    with pytest.raises(ValueError, match="cannot carry priority tiers"):
        encode_payload(p, codec="paper-v1")


def test_single_tier_is_no_tier() -> None:
    p = make(tiers=np.zeros(100, np.int64))  # type: ignore[arg-type]
    assert p.tiers is None and p.n_tiers == 1 and "n_tiers" not in read_header(encode_payload(p))[0]
