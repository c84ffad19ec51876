"""Hostile payloads: every input decodes to a valid Payload or is refused with PayloadError (PoolMismatchError
when a forged header no longer fits the pool's layout) — nothing else, no hang.

Mutations are re-signed (checksum recomputed), so they reach the codec decoders instead of stopping at the
checksum. ``PLADA_FUZZ_EXAMPLES=20000 pytest tests/unit/test_fuzz.py`` runs the long version.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plada.shared.errors import PayloadError, PoolMismatchError
from plada.shared.payload import MAGIC, Payload, decode_payload, encode_payload, read_header
from plada.shared.pool import PoolLayout

EXAMPLES = int(os.environ.get("PLADA_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, PoolLayout | None]:
    n_pool = draw(st.integers(1, 5_000))
    k = draw(st.integers(1, 300))
    keep = draw(st.integers(0, min(n_pool, 400)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # clustered: a run of dense indices
        start = int(rng.integers(0, n_pool - keep + 1))
        idx = np.arange(start, start + keep)
    else:
        idx = rng.choice(n_pool, size=keep, replace=False)
    labels = rng.integers(0, k, keep)
    if draw(st.booleans()):  # labels that follow the pool position, so run / dominant-label models win
        labels = np.where(rng.random(keep) < 0.9, (np.sort(idx) // 300) % k, labels)
    codec = draw(st.sampled_from(["paper-v1", "entropy-v1", "entropy-v2"]))
    ranged = codec != "paper-v1"
    tiers = rng.integers(0, draw(st.integers(1, 16)), keep) if ranged and draw(st.booleans()) else None
    p = Payload(
        indices=np.sort(idx),
        labels=labels,
        classes=tuple(f"c{i}" for i in range(k)),
        pool_id="ab" * 32,
        n_pool=n_pool,
        task="fuzz",
        version=1,
        tiers=tiers,
    )
    layout = None
    if ranged and draw(st.booleans()):  # code in a group order the decoder must know
        layout = PoolLayout.from_groups(rng.integers(0, draw(st.integers(1, 40)), n_pool))
    return encode_payload(p, codec=codec, layout=layout), layout


def _resign(data: bytes) -> bytes:
    body = data[:-32]
    return body + hashlib.sha256(body).digest()


def _check(data: bytes, layout: PoolLayout | None = None) -> None:
    try:
        p = decode_payload(data, layout=layout)
    except (PayloadError, PoolMismatchError):  # a clean refusal; a pool mismatch when n_pool was forged
        return
    assert len(p.indices) == len(p.labels)
    assert (np.diff(p.indices) > 0).all() and (
        len(p) == 0 or (p.indices[-1] < p.n_pool and p.labels.max() < len(p.classes))
    )


@FUZZ
@given(payloads(), st.data())
def test_mutated_bodies(pc: tuple[bytes, PoolLayout | None], data: st.DataObject) -> None:
    raw, layout = pc
    _, pos, blen = read_header(raw)
    body = bytearray(raw[pos : pos + blen])
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
    if kind == "flip" and body:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(body) * 8 - 1))
            body[i // 8] ^= 1 << (i % 8)
    elif kind == "truncate":
        body = body[: data.draw(st.integers(0, len(body)))]
    elif kind == "random":
        body = bytearray(data.draw(st.binary(max_size=2_000)))
    else:
        i = data.draw(st.integers(0, len(body)))
        body[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    forged = raw[: pos - 4] + struct.pack("<I", len(body)) + bytes(body) + bytes(32)
    _check(_resign(forged), layout)


@FUZZ
@given(payloads(), st.data())
def test_mutated_headers(pc: tuple[bytes, PoolLayout | None], data: st.DataObject) -> None:
    import json

    raw, layout = pc
    header, pos, blen = read_header(raw)
    key = data.draw(st.sampled_from(["n_pool", "n_items", "classes", "codec", "version", "n_tiers"]))
    value = data.draw(
        st.one_of(
            st.integers(-5, 2**33),
            st.lists(st.text(max_size=3), max_size=4),
            st.dictionaries(
                st.sampled_from(["name", "labels", "index", "block_size"]),
                st.one_of(st.integers(-1, 10**6), st.text(max_size=12)),
            ),
        )
    )
    h = json.dumps(header | {key: value}).encode()
    forged = struct.pack("<4sBBI", MAGIC, raw[4], 0, len(h)) + h + raw[pos - 4 : pos + blen] + bytes(32)
    _check(_resign(forged), layout)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(blob: bytes) -> None:
    _check(blob)
    _check(_resign(MAGIC + bytes([2, 0]) + blob + bytes(32)))
