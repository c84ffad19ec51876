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

from typing import Any

import numpy as np
import zstandard

from plada.shared.codecs.rangecoding import (
    P_ONE,
    U32,
    Reader,
    Sections,
    block_candidates,
    categorical,
    check_layout,
    decode_sections,
    decode_tiers,
    dominant,
    encode_orders,
    fixed_bounds,
    fixed_p,
    get,
    get_gaps,
    inflate_prelude,
    library,
    prelude_bytes,
    put,
    put_gaps,
    read_bounds,
)
from plada.shared.errors import PayloadCorruptError, PayloadVersionError
from plada.shared.pool import PoolLayout

NAME = "entropy-v1"
FORMAT = 2
CARRIES_TIERS = True
MAX_LEVELS = 256
LABEL_MODES = ("iid", "uniform", "runs", "dominant")


# ---------------------------------------------------------------- index section


def _encode_index(indices: np.ndarray, bounds: np.ndarray, spec: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Returns (prelude int arrays, range-coded words) for one blocking; ``spec`` is the block size written to
    the prelude (0 = the layout's group boundaries)."""
    cm = library()
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


def _decode_index(
    rd: Reader, words: np.ndarray, n_pool: int, n_items: int, layout_bounds: np.ndarray | None
) -> np.ndarray:
    cm = library()
    _, bounds = read_bounds(rd, n_pool, layout_bounds)
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


def encode_labels(
    labels: np.ndarray,
    k: int,
    mode: str,
    indices: np.ndarray,
    lblock: int = 0,
    bounds: np.ndarray | None = None,
    enc: Any = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The label section in ``mode`` (one of ``LABEL_MODES``; entropy-v2 reuses these models) → (prelude
    arrays, words); ``enc`` may be a :class:`Recorder` to replay the symbols into a shared stream."""
    cm = library()
    enc = cm.stream.queue.RangeEncoder() if enc is None else enc
    if mode == "iid":
        counts = np.bincount(labels, minlength=k)
        put(enc, labels, categorical(counts))
        return [counts.astype(np.int64)], enc.get_compressed()
    if mode == "uniform":  # no table: wins when there are few items per class
        put(enc, labels, categorical(np.ones(k)))
        return [], enc.get_compressed()
    if mode == "dominant":
        assert bounds is not None
        ne, inv = np.unique(np.searchsorted(bounds, indices, side="right") - 1, return_inverse=True)
        dom = dominant(labels, inv, len(ne), k)
        is_dom = labels == dom[inv]
        others = labels[~is_dom]
        dcounts, ocounts = np.bincount(dom, minlength=k), np.bincount(others, minlength=k)
        p_num = fixed_p(int(is_dom.sum()), max(len(labels), 1))
        put(enc, dom, categorical(dcounts))
        if len(labels):
            enc.encode(is_dom.astype(np.int32), cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False))
        put(enc, others, categorical(ocounts))
        prelude = [np.array([lblock, p_num], np.int64), dcounts.astype(np.int64), ocounts.astype(np.int64)]
        return prelude, enc.get_compressed()
    same = np.r_[False, labels[1:] == labels[:-1]] if len(labels) else np.zeros(0, bool)
    heads = labels[~same]
    counts = np.bincount(heads, minlength=k)
    n_same = int(same.sum())
    p_num = fixed_p(n_same, max(len(labels) - 1, 1))
    if len(labels) > 1:
        enc.encode(same[1:].astype(np.int32), cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False))
    put(enc, heads, categorical(counts))
    return [np.array([p_num], np.int64), counts.astype(np.int64)], enc.get_compressed()


def decode_labels(
    rd: Reader,
    words: np.ndarray,
    k: int,
    n_items: int,
    mode: str,
    indices: np.ndarray,
    n_pool: int,
    layout_bounds: np.ndarray | None,
) -> np.ndarray:
    """``words`` is the label section, or a RangeDecoder already positioned at it."""
    cm = library()
    dec = cm.stream.queue.RangeDecoder(words) if isinstance(words, np.ndarray) else words
    if mode == "dominant":
        _, lbounds = read_bounds(rd, n_pool, layout_bounds)
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
        dom = get(dec, categorical(dcounts), len(ne))
        is_dom = dec.decode(cm.stream.model.Bernoulli(p_num / P_ONE, perfect=False), n_items).astype(bool)
        if int(ocounts.sum()) != int((~is_dom).sum()):
            raise PayloadCorruptError("label counts do not match the dominant-label flags")
        labels = dom[inv]
        labels[~is_dom] = get(dec, categorical(ocounts), int((~is_dom).sum()))
        return labels
    if mode == "uniform":
        labels = get(dec, categorical(np.ones(k)), n_items)
        if n_items and labels.max() >= k:
            raise PayloadCorruptError("label out of range")
        return labels
    if mode == "iid":
        counts = rd.take(k, limit=n_items)
        if int(counts.sum()) != n_items:
            raise PayloadCorruptError("label counts do not add up to the number of items")
        return get(dec, categorical(counts), n_items)
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
    heads = get(dec, categorical(counts), n_heads)
    which = np.cumsum(~same) - 1
    return np.asarray(heads[which])


# ---------------------------------------------------------------- codec API


def _size(section: tuple[list[np.ndarray], np.ndarray]) -> int:
    return len(prelude_bytes(section[0])) + 4 * len(section[1])


def assemble_body(
    index: tuple[list[np.ndarray], np.ndarray], labels: tuple[list[np.ndarray], np.ndarray], tiers: np.ndarray | None
) -> bytes:
    """Prelude + word sections (and the tier section: one categorical symbol per item in its own words)."""
    tier_prelude: list[np.ndarray] = []
    tier_words = np.zeros(0, np.uint32)
    if tiers is not None:
        counts = np.bincount(tiers, minlength=int(tiers.max()) + 1 if len(tiers) else 1)
        enc = library().stream.queue.RangeEncoder()
        put(enc, tiers, categorical(counts))
        tier_prelude, tier_words = [counts.astype(np.int64)], enc.get_compressed()
    prelude = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(
        prelude_bytes(index[0] + labels[0] + tier_prelude)
    )
    return (
        U32.pack(len(prelude))
        + prelude
        + U32.pack(len(index[1]))
        + index[1].astype("<u4").tobytes()
        + (U32.pack(len(labels[1])) if tiers is not None else b"")
        + labels[1].astype("<u4").tobytes()
        + tier_words.astype("<u4").tobytes()
    )


def _encode_in(
    idx: np.ndarray,
    lab: np.ndarray,
    n_pool: int,
    k: int,
    layout_bounds: np.ndarray | None,
    tiers: np.ndarray | None = None,
) -> tuple[bytes, int, str]:
    """Best body for positions ``idx`` (sorted): every blocking and label model; returns (body, spec, mode)."""
    blockings = [(b, fixed_bounds(n_pool, b)) for b in block_candidates(n_pool)]
    if layout_bounds is not None:
        blockings.append((0, layout_bounds))
    best_idx = min((_encode_index(idx, bounds, spec) for spec, bounds in blockings), key=_size)
    trials: list[tuple[str, int, np.ndarray | None]] = [("iid", 0, None), ("uniform", 0, None), ("runs", 0, None)]
    trials += [("dominant", spec, bounds) for spec, bounds in blockings if spec != n_pool]
    best_lab, lab_mode = min(
        ((encode_labels(lab, k, m, idx, spec, bounds), m) for m, spec, bounds in trials), key=lambda r: _size(r[0])
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


def split_body(
    body: bytes, *, n_pool: int, n_classes: int, n_tiers: int
) -> tuple[bytes, np.ndarray, int, np.ndarray, np.ndarray]:
    """Check and cut a body into (inflated prelude, all words, index word count, label words, tier words)."""
    if len(body) < 8:
        raise PayloadCorruptError("entropy body too short")
    (plen,) = U32.unpack_from(body, 0)
    if 4 + plen + 4 > len(body):
        raise PayloadCorruptError("entropy prelude runs past the body")
    raw = inflate_prelude(body[4 : 4 + plen], n_pool=n_pool, n_classes=n_classes)
    pos = 4 + plen
    (n_iw,) = U32.unpack_from(body, pos)
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
) -> Sections:
    """Inverse of :func:`encode` → (indices, labels, tiers or None). A payload coded in a pool layout needs
    that pool's ``layout``."""
    layout_id = check_layout(codec, layout, n_pool)
    mode = codec.get("labels")
    if mode not in LABEL_MODES:
        raise PayloadVersionError(f"unknown label model {mode!r} in codec {NAME}")
    raw, words, n_iw, label_words, tier_words = split_body(body, n_pool=n_pool, n_classes=n_classes, n_tiers=n_tiers)

    def read(rd: Reader, bounds: np.ndarray | None) -> Sections:
        indices = _decode_index(rd, words[:n_iw], n_pool, n_items, bounds)
        labels = decode_labels(rd, label_words, n_classes, n_items, mode, indices, n_pool, bounds)
        if n_tiers == 1:
            return indices, labels, None
        return indices, labels, decode_tiers(rd, library().stream.queue.RangeDecoder(tier_words), n_tiers, n_items)

    return decode_sections(raw, layout, layout_id, read)
