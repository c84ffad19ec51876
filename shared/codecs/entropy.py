"""Codec ``entropy-v1``: range coding (constriction) of the kept index set and the labels.

Indices: the pool is cut into blocks of ``block_size`` items (one block = the whole pool). Each kept item's
gap to the previous kept item of its block is coded as a geometric variable whose parameter p is shared by
all blocks of one *level*; a level groups blocks of similar density (quarter-octave steps of c_b/s_b).
A geometric gap splits exactly into independent parts q = d // M and r = d % M, each coded with an i.i.d.
categorical model, so encoding *and decoding* are vectorised: no per-symbol Python loop. For a uniformly
random selection one block is best and the cost is within a few bytes of log2 C(n, K); for selections that
cluster in parts of the pool, blocks let the density follow the clusters. The encoder tries several block
sizes and keeps the smallest result.

Labels, whichever is smallest: ``uniform`` (log2 k bits each, no table: few items per class); ``iid`` with the
empirical class frequencies (≈ K·H(labels) + a k-entry table); ``runs`` ("same label as the previous kept
item" flags + the labels at run starts); ``dominant`` (per block of the pool: its most frequent label, a
"has the dominant label" flag per item, and the other labels), which wins when the pool order groups
similar items (ImageNet synset folders, or a pool sorted by embedding cluster).

Every probability is computed from integers in the prelude with correctly rounded IEEE operations only
(products, quotients, cumulative products), so encoder and decoder build bit-identical models on any machine.

Body: ``u32 prelude length | prelude (zstd frame of LEB128 varints) | u32 index words | index words (u32) |
label words (u32)``. The prelude layout is in docs/payload-format.md.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import zstandard

from plada.shared.errors import PayloadCorruptError, PayloadNeedsPoolError, PayloadVersionError, PoolMismatchError
from plada.shared.pool import PoolLayout

NAME = "entropy-v1"
P_BITS = 30
P_ONE = 1 << P_BITS
MAX_M = 1 << 20
MAX_Q = 1 << 16
MAX_LEVELS = 256
MAX_PRELUDE = 64 << 20
MIN_BLOCK = 256
_U32 = struct.Struct("<I")


def _cm() -> Any:
    import constriction

    return constriction


# ---------------------------------------------------------------- varints
def _varints(values: np.ndarray) -> bytes:
    v = np.asarray(values, dtype=np.uint64)
    out = bytearray()
    for x in v.tolist():
        while x >= 0x80:
            out.append((x & 0x7F) | 0x80)
            x >>= 7
        out.append(x)
    return bytes(out)


class _Reader:
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
def _powers(ratio: float, size: int) -> np.ndarray:
    """[1, ratio, ratio², …] by sequential products: identical bits on every IEEE machine."""
    out = np.empty(size, dtype=np.float64)
    out[0] = 1.0
    if size > 1:
        out[1:] = np.cumprod(np.full(size - 1, ratio, dtype=np.float64))
    return out


def _golomb_m(p: float) -> int:
    """Golomb's parameter for a geometric with success probability p (encoder side only)."""
    if p >= 0.5:
        return 1
    m = int(np.ceil(np.log(2.0 - p) / -np.log1p(-p)))
    return max(1, min(m, MAX_M))


def _categorical(weights: np.ndarray) -> Any:
    """A categorical model, or None for a one-symbol alphabet (nothing to code; constriction refuses it)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) <= 1 or not w.sum() > 0:
        return None
    # every symbol keeps at least 2^-20 of the largest weight, so a value the fitted model calls
    # impossible (an outlier gap) stays encodable; the floor costs next to nothing elsewhere
    w = np.maximum(w, w.max() * 2.0**-20)
    return _cm().stream.model.Categorical(w.astype(np.float32), perfect=False)


def _put(enc: Any, symbols: np.ndarray, model: Any) -> None:
    if model is not None and len(symbols):
        enc.encode(np.asarray(symbols, dtype=np.int32), model)


def _get(dec: Any, model: Any, n: int) -> np.ndarray:
    if model is None or n == 0:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(dec.decode(model, n), dtype=np.int64)


def _level_models(p_num: int, m: int, q_max: int) -> tuple[Any, Any]:
    p = p_num / P_ONE
    r_tab = _powers(1.0 - p, m + 1)
    ratio_q = r_tab[m]  # (1-p)^M
    q_tab = _powers(ratio_q, q_max + 1)
    return _categorical(q_tab), _categorical(r_tab[:m])


def _p_num(successes: int, trials: int) -> int:
    return max(1, min(P_ONE - 1, (successes * P_ONE + trials // 2) // max(trials, 1)))


def put_gaps(enc: Any, d: np.ndarray) -> list[int]:
    """Range-code gaps ``d`` (≥ 0, non-empty) as one geometric variable; returns the parameters [p, M, Q]."""
    p_num = _p_num(len(d), len(d) + int(d.sum()))
    m = _golomb_m(p_num / P_ONE)
    q = d // m
    q_max = int(q.max())
    if q_max > MAX_Q:  # the geometric fit is poor here: widen M until q fits
        m = min(MAX_M, int(-(-int(d.max() + 1) // (MAX_Q + 1))))
        q = d // m
        q_max = int(q.max())
    q_model, r_model = _level_models(p_num, m, q_max)
    _put(enc, q, q_model)
    _put(enc, d % m, r_model)
    return [p_num, m, q_max]


def get_gaps(dec: Any, p_num: int, m: int, q_max: int, n: int) -> np.ndarray:
    if not (1 <= p_num < P_ONE and 1 <= m <= MAX_M and 0 <= q_max <= MAX_Q):
        raise PayloadCorruptError("gap parameters out of range")
    q_model, r_model = _level_models(p_num, m, q_max)
    q = _get(dec, q_model, n)
    r = _get(dec, r_model, n)
    return np.asarray(q * m + r, dtype=np.int64)


# ---------------------------------------------------------------- index section
def _fixed_bounds(n_pool: int, block: int) -> np.ndarray:
    return np.asarray(np.r_[np.arange(0, n_pool, block), n_pool], dtype=np.int64)


def _encode_index(indices: np.ndarray, bounds: np.ndarray, spec: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Returns (prelude int arrays, range-coded words) for one blocking; ``spec`` is the block size written to
    the prelude (0 = the layout's group boundaries)."""
    cm = _cm()
    n_blocks = len(bounds) - 1
    blk = np.searchsorted(bounds, indices, side="right") - 1
    counts = np.bincount(blk, minlength=n_blocks).astype(np.int64)
    nonempty = np.flatnonzero(counts)
    sizes = bounds[nonempty + 1] - bounds[nonempty]
    # gaps within blocks: d = idx - prev - 1, prev = block start - 1 for a block's first item
    prev = np.r_[-1, indices[:-1]]
    first_in_block = np.r_[True, blk[1:] != blk[:-1]] if len(indices) else np.zeros(0, bool)
    prev = np.where(first_in_block, bounds[blk] - 1, prev)
    gaps = indices - prev - 1
    dens = counts[nonempty] / sizes
    lvl_key = np.round(np.log2(dens) * 4).astype(np.int64)
    uniq, lvl_of_block = np.unique(lvl_key, return_inverse=True)
    if len(uniq) > MAX_LEVELS:  # merge to at most MAX_LEVELS levels
        lvl_of_block = (lvl_of_block * MAX_LEVELS) // len(uniq)
    n_levels = int(lvl_of_block.max()) + 1 if len(nonempty) else 0
    item_level = np.repeat(lvl_of_block, counts[nonempty])
    enc = cm.stream.queue.RangeEncoder()
    level_params: list[int] = []
    for lv in range(n_levels):
        d = gaps[item_level == lv]
        if len(d) == 0:
            level_params += [1, 1, 0]
            continue
        level_params += put_gaps(enc, d)
    prelude = [
        np.array([spec, n_levels], np.int64),
        counts,
        lvl_of_block.astype(np.int64),
        np.asarray(level_params, np.int64),
    ]
    return prelude, enc.get_compressed()


def _read_bounds(rd: _Reader, n_pool: int, layout_bounds: np.ndarray | None) -> tuple[int, np.ndarray]:
    spec = rd.one(limit=n_pool)
    if spec == 0:
        if layout_bounds is None:
            raise PayloadCorruptError("block spec 0 (pool layout) in a payload that is not coded in a layout")
        return spec, layout_bounds
    if spec < MIN_BLOCK and spec != n_pool:
        raise PayloadCorruptError(f"block size {spec} out of range")
    return spec, _fixed_bounds(n_pool, spec)


def _decode_index(
    rd: _Reader, words: np.ndarray, n_pool: int, n_items: int, layout_bounds: np.ndarray | None
) -> np.ndarray:
    cm = _cm()
    _, bounds = _read_bounds(rd, n_pool, layout_bounds)
    n_levels = rd.one(limit=MAX_LEVELS)
    n_blocks = len(bounds) - 1
    counts = rd.take(n_blocks, limit=n_pool)
    if int(counts.sum()) != n_items:
        raise PayloadCorruptError(f"block counts add up to {int(counts.sum())}, header says {n_items}")
    nonempty = np.flatnonzero(counts)
    sizes = bounds[nonempty + 1] - bounds[nonempty]
    if (counts[nonempty] > sizes).any():
        raise PayloadCorruptError("a block holds more items than it has")
    lvl_of_block = rd.take(len(nonempty), limit=max(n_levels - 1, 0))
    params = rd.take(3 * n_levels, limit=P_ONE).reshape(-1, 3)
    item_level = np.repeat(lvl_of_block, counts[nonempty])
    gaps = np.zeros(n_items, dtype=np.int64)
    dec = cm.stream.queue.RangeDecoder(words)
    for lv in range(n_levels):
        p_num, m, q_max = (int(v) for v in params[lv])
        slots = np.flatnonzero(item_level == lv)
        if len(slots) == 0:
            continue
        gaps[slots] = get_gaps(dec, p_num, m, q_max, len(slots))
    if n_items == 0:
        return np.zeros(0, dtype=np.int64)
    # positions: block start + running sum of (gap + 1) restarted at each block
    steps = gaps + 1
    csum = np.cumsum(steps)
    starts = np.r_[0, np.cumsum(counts[nonempty])[:-1]]
    base = np.repeat(csum[starts] - steps[starts], counts[nonempty])
    within = csum - base - 1
    if (within >= np.repeat(sizes, counts[nonempty])).any():
        raise PayloadCorruptError("a decoded index runs past the end of its block")
    return np.repeat(bounds[nonempty], counts[nonempty]) + within


# ---------------------------------------------------------------- label section
def _dominant(labels: np.ndarray, inv: np.ndarray, n_blocks: int, k: int) -> np.ndarray:
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


def _encode_labels(
    labels: np.ndarray,
    k: int,
    mode: str,
    indices: np.ndarray,
    lblock: int = 0,
    bounds: np.ndarray | None = None,
    enc: Any = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """(prelude arrays, words); ``enc`` may be a :class:`Recorder` to replay the symbols into a shared stream."""
    cm = _cm()
    enc = cm.stream.queue.RangeEncoder() if enc is None else enc
    if mode == "iid":
        counts = np.bincount(labels, minlength=k)
        _put(enc, labels, _categorical(counts))
        return [counts.astype(np.int64)], enc.get_compressed()
    if mode == "uniform":  # no table: wins when there are few items per class
        _put(enc, labels, _categorical(np.ones(k)))
        return [], enc.get_compressed()
    if mode == "dominant":
        assert bounds is not None
        ne, inv = np.unique(np.searchsorted(bounds, indices, side="right") - 1, return_inverse=True)
        dom = _dominant(labels, inv, len(ne), k)
        is_dom = labels == dom[inv]
        others = labels[~is_dom]
        dcounts, ocounts = np.bincount(dom, minlength=k), np.bincount(others, minlength=k)
        p_num = _p_num(int(is_dom.sum()), max(len(labels), 1))
        _put(enc, dom, _categorical(dcounts))
        if len(labels):
            enc.encode(is_dom.astype(np.int32), cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False))
        _put(enc, others, _categorical(ocounts))
        prelude = [np.array([lblock, p_num], np.int64), dcounts.astype(np.int64), ocounts.astype(np.int64)]
        return prelude, enc.get_compressed()
    same = np.r_[False, labels[1:] == labels[:-1]] if len(labels) else np.zeros(0, bool)
    heads = labels[~same]
    counts = np.bincount(heads, minlength=k)
    n_same = int(same.sum())
    p_num = _p_num(n_same, max(len(labels) - 1, 1))
    if len(labels) > 1:
        enc.encode(same[1:].astype(np.int32), cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False))
    _put(enc, heads, _categorical(counts))
    return [np.array([p_num], np.int64), counts.astype(np.int64)], enc.get_compressed()


def _decode_labels(
    rd: _Reader,
    words: np.ndarray,
    k: int,
    n_items: int,
    mode: str,
    indices: np.ndarray,
    n_pool: int,
    layout_bounds: np.ndarray | None,
) -> np.ndarray:
    """``words`` is the label section, or a RangeDecoder already positioned at it."""
    cm = _cm()
    dec = cm.stream.queue.RangeDecoder(words) if isinstance(words, np.ndarray) else words
    if mode == "dominant":
        _, lbounds = _read_bounds(rd, n_pool, layout_bounds)
        p_num = rd.one(limit=P_ONE - 1)
        dcounts = rd.take(k, limit=n_items)
        ocounts = rd.take(k, limit=n_items)
        if n_items == 0:
            return np.zeros(0, np.int64)
        if not 1 <= p_num < P_ONE:
            raise PayloadCorruptError("dominant-label parameters out of range")
        ne, inv = np.unique(np.searchsorted(lbounds, indices, side="right") - 1, return_inverse=True)
        if int(dcounts.sum()) != len(ne):
            raise PayloadCorruptError("dominant-label counts do not match the blocks")
        dom = _get(dec, _categorical(dcounts), len(ne))
        is_dom = dec.decode(cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False), n_items).astype(bool)
        if int(ocounts.sum()) != int((~is_dom).sum()):
            raise PayloadCorruptError("label counts do not match the dominant-label flags")
        labels = dom[inv]
        labels[~is_dom] = _get(dec, _categorical(ocounts), int((~is_dom).sum()))
        return labels
    if mode == "uniform":
        labels = _get(dec, _categorical(np.ones(k)), n_items)
        if n_items and labels.max() >= k:
            raise PayloadCorruptError("label out of range")
        return labels
    if mode == "iid":
        counts = rd.take(k, limit=n_items)
        if int(counts.sum()) != n_items:
            raise PayloadCorruptError("label counts do not add up to the number of items")
        return _get(dec, _categorical(counts), n_items)
    p_num = rd.one(limit=P_ONE - 1)
    counts = rd.take(k, limit=n_items)
    if n_items == 0:
        return np.zeros(0, np.int64)
    if not 1 <= p_num < P_ONE:
        raise PayloadCorruptError("run probability out of range")
    same = np.zeros(n_items, dtype=bool)
    if n_items > 1:
        same[1:] = dec.decode(cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False), n_items - 1).astype(bool)
    n_heads = int((~same).sum())
    if int(counts.sum()) != n_heads:
        raise PayloadCorruptError("run-start label counts do not match the run flags")
    heads = _get(dec, _categorical(counts), n_heads)
    which = np.cumsum(~same) - 1
    return np.asarray(heads[which])


# ---------------------------------------------------------------- codec API
def _block_candidates(n_pool: int) -> list[int]:
    cands = [n_pool] + [b for b in (1 << 8, 1 << 10, 1 << 12, 1 << 14, 1 << 16) if b < n_pool]
    return sorted(set(cands))


def _size(section: tuple[list[np.ndarray], np.ndarray]) -> int:
    return len(_prelude_bytes(section[0])) + 4 * len(section[1])


def assemble_body(
    index: tuple[list[np.ndarray], np.ndarray], labels: tuple[list[np.ndarray], np.ndarray], tiers: np.ndarray | None
) -> bytes:
    """Prelude + word sections (and the tier section: one categorical symbol per item in its own words)."""
    tier_prelude: list[np.ndarray] = []
    tier_words = np.zeros(0, np.uint32)
    if tiers is not None:
        counts = np.bincount(tiers, minlength=int(tiers.max()) + 1 if len(tiers) else 1)
        enc = _cm().stream.queue.RangeEncoder()
        _put(enc, tiers, _categorical(counts))
        tier_prelude, tier_words = [counts.astype(np.int64)], enc.get_compressed()
    prelude = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(
        _prelude_bytes(index[0] + labels[0] + tier_prelude)
    )
    return (
        _U32.pack(len(prelude))
        + prelude
        + _U32.pack(len(index[1]))
        + index[1].astype("<u4").tobytes()
        + (_U32.pack(len(labels[1])) if tiers is not None else b"")
        + labels[1].astype("<u4").tobytes()
        + tier_words.astype("<u4").tobytes()
    )


def decode_tiers(rd: _Reader, dec: Any, n_tiers: int, n_items: int) -> np.ndarray:
    counts = rd.take(n_tiers, limit=n_items)
    if int(counts.sum()) != n_items:
        raise PayloadCorruptError("tier counts do not add up to the number of items")
    return _get(dec, _categorical(counts), n_items)


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
            self._words = self.replay(_cm().stream.queue.RangeEncoder()).get_compressed()
        return self._words

    def replay(self, enc: Any) -> Any:
        for symbols, model in self.ops:
            enc.encode(symbols, model)
        return enc


def _encode_in(
    idx: np.ndarray,
    lab: np.ndarray,
    n_pool: int,
    k: int,
    layout_bounds: np.ndarray | None,
    tiers: np.ndarray | None = None,
) -> tuple[bytes, int, str]:
    """Best body for positions ``idx`` (sorted): every blocking and label model; returns (body, spec, mode)."""
    blockings = [(b, _fixed_bounds(n_pool, b)) for b in _block_candidates(n_pool)]
    if layout_bounds is not None:
        blockings.append((0, layout_bounds))
    best_idx = min((_encode_index(idx, bounds, spec) for spec, bounds in blockings), key=_size)
    trials: list[tuple[str, int, np.ndarray | None]] = [("iid", 0, None), ("uniform", 0, None), ("runs", 0, None)]
    trials += [("dominant", spec, bounds) for spec, bounds in blockings if spec != n_pool]
    best_lab, lab_mode = min(
        ((_encode_labels(lab, k, m, idx, spec, bounds), m) for m, spec, bounds in trials), key=lambda r: _size(r[0])
    )
    body = assemble_body(best_idx, best_lab, tiers)
    return body, int(best_idx[0][0][0]), lab_mode


def encode(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    n_pool: int,
    n_classes: int,
    layout: PoolLayout | None = None,
    tiers: np.ndarray | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Encode in pool order and, given the pool's ``layout``, in its group order too; keep the smallest.

    ``tiers`` (one priority tier per item) adds a third word section; the header's ``n_tiers`` announces it.
    """
    return encode_orders(
        _encode_in, NAME, indices, labels, n_pool=n_pool, n_classes=n_classes, layout=layout, tiers=tiers
    )


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


def _prelude_bytes(arrays: list[np.ndarray]) -> bytes:
    return b"".join(_varints(a) for a in arrays)


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


def inflate_prelude(frame: bytes, *, n_pool: int, n_classes: int) -> bytes:
    """Inflate a prelude frame whose declared size is checked first, so a hostile body cannot make the decoder
    allocate without bound."""
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise PayloadCorruptError(f"prelude is not a zstd frame: {exc}") from exc
    if not 0 <= size <= MAX_PRELUDE or size > 10 * (n_pool + 3 * n_classes + 64):
        raise PayloadCorruptError(f"prelude inflates to {size} bytes")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        raw = dobj.decompress(frame)
    except zstandard.ZstdError as exc:
        raise PayloadCorruptError(f"prelude does not inflate: {exc}") from exc
    if len(raw) != size or dobj.unused_data or not dobj.eof:
        raise PayloadCorruptError("prelude has the wrong length or trailing bytes")
    return raw


def split_body(
    body: bytes, *, n_pool: int, n_classes: int, n_tiers: int
) -> tuple[bytes, np.ndarray, int, np.ndarray, np.ndarray]:
    """Check and cut a body into (inflated prelude, all words, index word count, label words, tier words)."""
    if len(body) < 8:
        raise PayloadCorruptError("entropy body too short")
    (plen,) = _U32.unpack_from(body, 0)
    if 4 + plen + 4 > len(body):
        raise PayloadCorruptError("entropy prelude runs past the body")
    raw = inflate_prelude(body[4 : 4 + plen], n_pool=n_pool, n_classes=n_classes)
    pos = 4 + plen
    (n_iw,) = _U32.unpack_from(body, pos)
    pos += 4
    if pos + 4 * n_iw > len(body) or (len(body) - pos) % 4:
        raise PayloadCorruptError("entropy word sections do not fit the body")
    words = np.frombuffer(body, dtype="<u4", offset=pos).astype(np.uint32)
    label_words, tier_words = words[n_iw:], np.zeros(0, np.uint32)
    if n_tiers > 1:
        if len(words) < n_iw + 1:
            raise PayloadCorruptError("entropy body lacks the tier section")
        n_lw = int(words[n_iw])
        if n_iw + 1 + n_lw > len(words):
            raise PayloadCorruptError("label words run past the body")
        label_words, tier_words = words[n_iw + 1 : n_iw + 1 + n_lw], words[n_iw + 1 + n_lw :]
    return raw, words, n_iw, label_words, tier_words


def decode(
    codec: dict[str, Any],
    body: bytes,
    *,
    n_pool: int,
    n_items: int,
    n_classes: int,
    layout: PoolLayout | None = None,
    n_tiers: int = 1,
) -> tuple[np.ndarray, ...]:
    """Inverse of :func:`encode` → (indices, labels[, tiers]). A payload coded in a pool layout needs that
    pool's ``layout``."""
    layout_id = check_layout(codec, layout, n_pool)
    mode = codec.get("labels")
    if mode not in ("iid", "uniform", "runs", "dominant"):
        raise PayloadVersionError(f"unknown label model {mode!r} in codec {NAME}")
    raw, words, n_iw, label_words, tier_words = split_body(body, n_pool=n_pool, n_classes=n_classes, n_tiers=n_tiers)
    rd = _Reader(raw)
    tiers = None
    try:
        bounds = layout.bounds if layout_id is not None and layout is not None else None
        indices = _decode_index(rd, words[:n_iw], n_pool, n_items, bounds)
        labels = _decode_labels(rd, label_words, n_classes, n_items, mode, indices, n_pool, bounds)
        if n_tiers > 1:
            tiers = decode_tiers(rd, _cm().stream.queue.RangeDecoder(tier_words), n_tiers, n_items)
    except (ValueError, RuntimeError, AssertionError, IndexError) as exc:  # constriction errors on junk
        raise PayloadCorruptError(f"entropy-coded data is inconsistent: {exc}") from exc
    if not rd.done():
        raise PayloadCorruptError("prelude has trailing values")
    if layout_id is not None and layout is not None:
        indices = layout.order[indices]  # coding positions -> pool indices (the Payload re-sorts)
    return (indices, labels) if tiers is None else (indices, labels, tiers)
