"""The range-coding toolkit both entropy codecs are built from (constriction underneath).

Prelude integers as LEB128 varints and a vectorised reader that bounds every value; geometric gap coding
(Golomb-split into two i.i.d. categorical parts, so decoding is vectorised); categorical and Bernoulli models
built from integers with correctly rounded IEEE operations only (bit-identical on every machine); a recorder
that sizes a section before it is replayed into a shared stream; zstd inflation with the size checked before
anything is allocated (also used by the paper codec); pool-layout checks; and coding in the pool's group
order. ``entropy-v1`` and ``entropy-v2`` differ only in how they group blocks into levels and model labels.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import zstandard

from plada.shared.errors import PayloadCorruptError, PayloadNeedsPoolError, PoolMismatchError
from plada.shared.pool import PoolLayout

P_BITS = 30
P_ONE = 1 << P_BITS
MAX_M = 1 << 20
MAX_Q = 1 << 16
MAX_PRELUDE = 64 << 20
MIN_BLOCK = 256
U32 = struct.Struct("<I")


def library() -> Any:
    import constriction

    return constriction


# ---------------------------------------------------------------- varints
def varints(values: np.ndarray) -> bytes:
    v = np.asarray(values, dtype=np.uint64)
    out = bytearray()
    for x in v.tolist():
        while x >= 0x80:
            out.append((x & 0x7F) | 0x80)
            x >>= 7
        out.append(x)
    return bytes(out)


class Reader:
    def __init__(self, data: bytes) -> None:
        self.arr = np.frombuffer(data, dtype=np.uint8)
        # positions of the last byte of every varint
        ends = np.flatnonzero(self.arr < 0x80)
        self.ends = ends
        self.pos = 0  # index into ends

    def take(self, n: int, *, limit: int) -> np.ndarray:
        if n < 0 or self.pos + n > len(self.ends):
            raise PayloadCorruptError("prelude is shorter than its layout needs")
        start = 0 if self.pos == 0 else int(self.ends[self.pos - 1]) + 1
        stop = int(self.ends[self.pos + n - 1]) + 1 if n else start
        chunk = self.arr[start:stop]
        self.pos += n
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if stop - start > 10 * n:
            raise PayloadCorruptError("prelude varint too long")
        # decode varints vectorised: group bytes by varint id
        ids = np.zeros(len(chunk), dtype=np.int64)
        ends_local = self.ends[self.pos - n : self.pos] - start
        ids[ends_local[:-1] + 1] = 1
        ids = np.cumsum(ids)
        first = np.r_[0, ends_local[:-1] + 1]
        shift = 7 * (np.arange(len(chunk)) - first[ids])
        if (shift > 56).any():
            raise PayloadCorruptError("prelude varint too long")
        vals = np.zeros(n, dtype=np.uint64)
        np.add.at(vals, ids, (chunk.astype(np.uint64) & np.uint64(0x7F)) << shift.astype(np.uint64))
        out = vals.astype(np.int64)
        if (out < 0).any() or (out > limit).any():
            raise PayloadCorruptError(f"prelude value out of range (limit {limit})")
        return out

    def one(self, *, limit: int) -> int:
        return int(self.take(1, limit=limit)[0])

    def done(self) -> bool:
        return self.pos == len(self.ends) and (len(self.ends) == 0 or self.ends[-1] == len(self.arr) - 1)


# ---------------------------------------------------------------- geometric tables
def powers(ratio: float, size: int) -> np.ndarray:
    """[1, ratio, ratio², …] by sequential products: identical bits on every IEEE machine."""
    out = np.empty(size, dtype=np.float64)
    out[0] = 1.0
    if size > 1:
        out[1:] = np.cumprod(np.full(size - 1, ratio, dtype=np.float64))
    return out


def golomb_m(p: float) -> int:
    """Golomb's parameter for a geometric with success probability p (encoder side only)."""
    if p >= 0.5:
        return 1
    m = int(np.ceil(np.log(2.0 - p) / -np.log1p(-p)))
    return max(1, min(m, MAX_M))


def categorical(weights: np.ndarray) -> Any:
    """A categorical model, or None for a one-symbol alphabet (nothing to code; constriction refuses it)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) <= 1 or not w.sum() > 0:
        return None
    # every symbol keeps at least 2^-20 of the largest weight, so a value the fitted model calls
    # impossible (an outlier gap) stays encodable; the floor costs next to nothing elsewhere
    w = np.maximum(w, w.max() * 2.0**-20)
    return library().stream.model.Categorical(w.astype(np.float32), perfect=False)


def put(enc: Any, symbols: np.ndarray, model: Any) -> None:
    if model is not None and len(symbols):
        enc.encode(np.asarray(symbols, dtype=np.int32), model)


def get(dec: Any, model: Any, n: int) -> np.ndarray:
    if model is None or n == 0:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(dec.decode(model, n), dtype=np.int64)


def level_models(p_num: int, m: int, q_max: int) -> tuple[Any, Any]:
    p = p_num / P_ONE
    r_tab = powers(1.0 - p, m + 1)
    ratio_q = r_tab[m]  # (1-p)^M
    q_tab = powers(ratio_q, q_max + 1)
    return categorical(q_tab), categorical(r_tab[:m])


def fixed_p(successes: int, trials: int) -> int:
    return max(1, min(P_ONE - 1, (successes * P_ONE + trials // 2) // max(trials, 1)))


def put_gaps(enc: Any, d: np.ndarray) -> list[int]:
    """Range-code gaps ``d`` (≥ 0, non-empty) as one geometric variable; returns the parameters [p, M, Q]."""
    p_num = fixed_p(len(d), len(d) + int(d.sum()))
    m = golomb_m(p_num / P_ONE)
    q = d // m
    q_max = int(q.max())
    if q_max > MAX_Q:  # the geometric fit is poor here: widen M until q fits
        m = min(MAX_M, int(-(-int(d.max() + 1) // (MAX_Q + 1))))
        q = d // m
        q_max = int(q.max())
    q_model, r_model = level_models(p_num, m, q_max)
    put(enc, q, q_model)
    put(enc, d % m, r_model)
    return [p_num, m, q_max]


def get_gaps(dec: Any, p_num: int, m: int, q_max: int, n: int) -> np.ndarray:
    if not (1 <= p_num < P_ONE and 1 <= m <= MAX_M and 0 <= q_max <= MAX_Q):
        raise PayloadCorruptError("gap parameters out of range")
    q_model, r_model = level_models(p_num, m, q_max)
    q = get(dec, q_model, n)
    r = get(dec, r_model, n)
    return np.asarray(q * m + r, dtype=np.int64)


def fixed_bounds(n_pool: int, block: int) -> np.ndarray:
    return np.asarray(np.r_[np.arange(0, n_pool, block), n_pool], dtype=np.int64)


def read_bounds(rd: Reader, n_pool: int, layout_bounds: np.ndarray | None) -> tuple[int, np.ndarray]:
    spec = rd.one(limit=n_pool)
    if spec == 0:
        if layout_bounds is None:
            raise PayloadCorruptError("block spec 0 (pool layout) in a payload that is not coded in a layout")
        return spec, layout_bounds
    if spec < MIN_BLOCK and spec != n_pool:
        raise PayloadCorruptError(f"block size {spec} out of range")
    return spec, fixed_bounds(n_pool, spec)


def dominant(labels: np.ndarray, inv: np.ndarray, n_blocks: int, k: int) -> np.ndarray:
    """The most frequent label of each block (ties: the smallest label)."""
    if len(labels) == 0:
        return np.zeros(n_blocks, dtype=np.int64)
    key = inv.astype(np.int64) * k + labels
    uniq, cnt = np.unique(key, return_counts=True)
    blk = uniq // k
    order = np.lexsort((uniq % k, -cnt, blk))
    first = np.r_[True, blk[order][1:] != blk[order][:-1]]
    dom = np.zeros(n_blocks, dtype=np.int64)
    dom[blk[order][first]] = (uniq % k)[order][first]
    return dom


def block_candidates(n_pool: int) -> list[int]:
    cands = [n_pool] + [b for b in (1 << 8, 1 << 10, 1 << 12, 1 << 14, 1 << 16) if b < n_pool]
    return sorted(set(cands))


def decode_tiers(rd: Reader, dec: Any, n_tiers: int, n_items: int) -> np.ndarray:
    counts = rd.take(n_tiers, limit=n_items)
    if int(counts.sum()) != n_items:
        raise PayloadCorruptError("tier counts do not add up to the number of items")
    return get(dec, categorical(counts), n_items)


class Recorder:
    """Stands in for a RangeEncoder: records (symbols, model) so a section can be sized alone and later
    replayed into one stream shared with the other sections."""

    def __init__(self) -> None:
        self.ops: list[tuple[np.ndarray, Any]] = []
        self._words: np.ndarray | None = None

    def encode(self, symbols: np.ndarray, model: Any) -> None:
        self.ops.append((np.asarray(symbols, dtype=np.int32), model))
        self._words = None

    def get_compressed(self) -> np.ndarray:
        if self._words is None:
            self._words = self.replay(library().stream.queue.RangeEncoder()).get_compressed()
        return self._words

    def replay(self, enc: Any) -> Any:
        for symbols, model in self.ops:
            enc.encode(symbols, model)
        return enc


def encode_orders(
    encode_in: Any,
    name: str,
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    n_pool: int,
    n_classes: int,
    layout: PoolLayout | None,
    tiers: np.ndarray | None,
) -> tuple[dict[str, Any], bytes]:
    """Run ``encode_in`` in pool order and, with a layout, in the layout's group order; keep the smaller."""
    idx = np.asarray(indices, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    tie = None if tiers is None else np.asarray(tiers, dtype=np.int64)
    body, spec, mode = encode_in(idx, lab, n_pool, n_classes, None, tie)
    info: dict[str, Any] = {"name": name, "block_size": spec, "labels": mode}
    if layout is not None and len(layout.order) == n_pool:
        rank = np.empty(n_pool, dtype=np.int64)
        rank[layout.order] = np.arange(n_pool)
        pos = rank[idx]
        o = np.argsort(pos, kind="stable")
        lbody, lspec, lmode = encode_in(
            pos[o], lab[o], n_pool, n_classes, layout.bounds, None if tie is None else tie[o]
        )
        if len(lbody) < len(body):
            body, info = lbody, {"name": name, "block_size": lspec, "labels": lmode, "layout": layout.layout_id}
    return info, body


def prelude_bytes(arrays: list[np.ndarray]) -> bytes:
    return b"".join(varints(a) for a in arrays)


def check_layout(codec: dict[str, Any], layout: PoolLayout | None, n_pool: int) -> str | None:
    """The payload's layout id, after checking that the caller holds that layout (else a clear error)."""
    layout_id = codec.get("layout")
    if layout_id is not None:
        if layout is None:
            raise PayloadNeedsPoolError(
                "payload is coded in its pool's group order; decode it against the pool "
                "(plada-client pull/train, or inspect --pool)"
            )
        if layout_id != layout.layout_id or len(layout.order) != n_pool:
            raise PoolMismatchError(
                f"payload is coded in pool layout {str(layout_id)[:12]}…, the local pool's is {layout.layout_id[:12]}…"
            )
    return None if layout_id is None else str(layout_id)


def inflate(frame: bytes, *, what: str, limit: int, exact: int | None = None) -> bytes:
    """Inflate one zstd frame whose declared size is checked (at most ``limit``; exactly ``exact`` when the
    layout fixes it) before anything is allocated: a hostile body cannot make a decoder allocate without bound.
    Every failure is a ``PayloadCorruptError`` naming ``what``."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise PayloadCorruptError(f"{what} is not a zstd frame: {exc}") from exc
    if exact is not None and size != exact:
        raise PayloadCorruptError(f"{what} inflates to {size} bytes, layout needs {exact}")
    if not 0 <= size <= limit:
        raise PayloadCorruptError(f"{what} inflates to {size} bytes")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        raw = dobj.decompress(frame)
    except zstandard.ZstdError as exc:
        raise PayloadCorruptError(f"{what} does not inflate: {exc}") from exc
    if len(raw) != size or dobj.unused_data or not dobj.eof:
        raise PayloadCorruptError(f"{what} has the wrong length or trailing bytes")
    return bytes(raw)


def inflate_prelude(frame: bytes, *, n_pool: int, n_classes: int) -> bytes:
    """A prelude holds at most a few varints per pool block and class: bounded by the pool's size."""
    return inflate(frame, what="prelude", limit=min(MAX_PRELUDE, 10 * (n_pool + 3 * n_classes + 64)))


Sections = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # indices (coding positions), labels, tiers


def decode_sections(
    raw: bytes, layout: PoolLayout | None, layout_id: str | None, read: Callable[[Reader, np.ndarray | None], Sections]
) -> Sections:
    """Run a codec's section reader over the inflated prelude ``raw``: constriction's errors on junk become
    ``PayloadCorruptError``, every prelude value must be used, and positions coded in the pool's group order
    are mapped back to pool indices (the Payload re-sorts)."""
    rd = Reader(raw)
    bounds = layout.bounds if layout_id is not None and layout is not None else None
    try:
        indices, labels, tiers = read(rd, bounds)
    except (ValueError, RuntimeError, AssertionError, IndexError) as exc:
        raise PayloadCorruptError(f"entropy-coded data is inconsistent: {exc}") from exc
    if not rd.done():
        raise PayloadCorruptError("prelude has trailing values")
    if layout_id is not None and layout is not None:
        indices = layout.order[indices]
    return indices, labels, tiers
