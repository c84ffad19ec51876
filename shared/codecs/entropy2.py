"""Codec ``entropy-v2``: entropy-v1's range coding with models that fit clustered selections.

Two things cost entropy-v1 bytes on selections shaped like real ones (relevant items packed in a few synset
folders, a thin scatter everywhere else), and this codec fixes both:

* **Index: pooled levels, no per-block counts.** v1 writes every block's count and codes gaps inside each
  block. A thin scatter then pays for a count per block *and* about log2(e) bits per item for restarting the
  gap code in every block. v2 gives every block (empty ones too) a density *level*, range-codes the level
  map, and codes the gaps of each level over the concatenation of its blocks as one geometric sequence. The
  encoder starts from quarter-octave density levels and merges neighbouring levels while an estimate of the
  total bits (map + Σ S·h(K/S) + per-level parameters) goes down, so a uniform scatter collapses into one
  background level (cost ≈ log2 C(S, K), the bound) while dense folders keep their own.
* **Labels: dominant labels only where a block is dense.** v1's ``dominant`` mode gives every non-empty block
  a dominant label, so a scattered item in a block of its own pays for one. v2 gives a dominant label only to
  blocks holding at least ``t`` items; items of thinner blocks are coded with their own class frequencies.

The uniform / iid / runs label modes are v1's. Every symbol (index, labels, tiers) goes into one range-coder
stream, and a prelude that zstd cannot shrink is stored as is: small payloads (a few KB) save ~15 bytes of
framing. Every model is built from integers with correctly rounded IEEE operations, as in v1, so encoder and
decoder agree bit for bit.

Body: ``u32 P | prelude (P & 0x7FFFFFFF bytes; zstd frame unless bit 31 of P is set) | words (u32)``.
Prelude (LEB128 varints), index part: ``spec, L, nb_0..nb_{L-1}, K_0..K_{L-1}``, then ``p, M, Q`` for every
level with K > 0. Words, in order: the level of every block (categorical, weights nb), per level with K > 0
the quotients and remainders of its gaps, then the labels, then the tiers. Label part ``dominant``:
``lspec, t, p_dom, mask`` and the k counts of dominant labels, of other labels in dense blocks, of labels in
thin blocks, each left out (equal weights instead) when its bit of ``mask`` is set.
docs/payload-format.md has the byte-exact description.
"""

from __future__ import annotations

from math import log2
from typing import Any

import numpy as np
import zstandard

from plada.shared.codecs import entropy as v1
from plada.shared.codecs import rangecoding as rc
from plada.shared.errors import PayloadCorruptError, PayloadVersionError
from plada.shared.pool import PoolLayout

NAME = "entropy-v2"
FORMAT = 3
CARRIES_TIERS = True
MAX_LEVELS = 256
LEVEL_BITS = 48.0  # what a level's parameters cost in the prelude, for the merge estimate
THRESHOLDS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LABEL_MODES = v1.LABEL_MODES
RAW = 1 << 31  # set in the prelude length word: the prelude is stored as is (small preludes do not inflate)
_Section = tuple[list[np.ndarray], "rc.Recorder"]


def _h(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, 0 at 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.asarray(np.nan_to_num(out, nan=0.0), dtype=np.float64)


def _ent(counts: np.ndarray) -> float:
    """Bits to code symbols with these counts under their own frequencies."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    return float((c * np.log2(n / c)).sum()) if n > 0 else 0.0


# ---------------------------------------------------------------- levels
def assign_levels(counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """A level per block (0 = sparsest), chosen to make the index section small.

    Start from quarter-octave density steps (empty blocks are their own, lowest step) and greedily merge the
    neighbouring pair that lowers the estimated bits most, until no merge helps."""
    n_blocks = len(counts)
    if n_blocks == 0:
        return np.zeros(0, dtype=np.int64)
    key = np.full(n_blocks, np.iinfo(np.int64).min, dtype=np.int64)
    ne = counts > 0
    key[ne] = np.round(np.log2(counts[ne] / sizes[ne]) * 4).astype(np.int64)
    uniq, lvl = np.unique(key, return_inverse=True)
    S = np.bincount(lvl, weights=sizes).astype(np.float64)
    K = np.bincount(lvl, weights=counts).astype(np.float64)
    nb = np.bincount(lvl).astype(np.float64)
    members = [[i] for i in range(len(uniq))]

    def cost(s: float, k: float, b: float) -> float:
        p = k / s if s > 0 else 0.0
        gaps = -s * (p * log2(p) + (1 - p) * log2(1 - p)) if 0 < p < 1 else 0.0
        return gaps + b * log2(n_blocks / b) + (LEVEL_BITS if k > 0 else 8.0)

    S_, K_, B_ = S.tolist(), K.tolist(), nb.tolist()
    costs = [cost(s, k, b) for s, k, b in zip(S_, K_, B_, strict=True)]
    while len(S_) > 1:
        deltas = [
            cost(S_[i] + S_[i + 1], K_[i] + K_[i + 1], B_[i] + B_[i + 1]) - costs[i] - costs[i + 1]
            for i in range(len(S_) - 1)
        ]
        i = int(np.argmin(deltas))
        if deltas[i] >= 0 and len(S_) <= MAX_LEVELS:
            break
        S_[i : i + 2] = [S_[i] + S_[i + 1]]
        K_[i : i + 2] = [K_[i] + K_[i + 1]]
        B_[i : i + 2] = [B_[i] + B_[i + 1]]
        members[i : i + 2] = [members[i] + members[i + 1]]
        costs[i : i + 2] = [cost(S_[i], K_[i], B_[i])]
    remap = np.empty(len(uniq), dtype=np.int64)
    for new, old in enumerate(members):
        remap[old] = new
    return remap[lvl]


def _virtual(level: np.ndarray, sizes: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset of every block inside its level's concatenation, total size S of every level)."""
    order = np.argsort(level, kind="stable")
    s = sizes[order]
    csum = np.cumsum(s) - s
    lvl_sorted = level[order]
    first = np.r_[True, lvl_sorted[1:] != lvl_sorted[:-1]] if len(level) else np.zeros(0, bool)
    level_start = np.maximum.accumulate(np.where(first, csum, 0)) if len(level) else csum
    off = np.empty(len(level), dtype=np.int64)
    off[order] = csum - level_start
    return off, np.bincount(level, weights=sizes, minlength=n_levels).astype(np.int64)


# ---------------------------------------------------------------- index section
def _encode_index(indices: np.ndarray, bounds: np.ndarray, spec: int) -> _Section:
    n_blocks = len(bounds) - 1
    sizes = np.diff(bounds)
    blk = np.searchsorted(bounds, indices, side="right") - 1
    counts = np.bincount(blk, minlength=n_blocks).astype(np.int64)
    level = assign_levels(counts, sizes)
    n_levels = int(level.max()) + 1 if n_blocks else 0
    nb = np.bincount(level, minlength=n_levels).astype(np.int64)
    K = np.bincount(level, weights=counts, minlength=n_levels).astype(np.int64)
    off, _ = _virtual(level, sizes, n_levels)
    enc = rc.Recorder()
    rc.put(enc, level, rc.categorical(nb))
    item_level = level[blk]
    virt = off[blk] + indices - bounds[blk]
    params: list[int] = []
    for lv in range(n_levels):
        if K[lv] == 0:
            continue
        v = virt[item_level == lv]  # increasing: blocks of a level are concatenated in pool order
        params += rc.put_gaps(enc, np.diff(np.r_[-1, v]) - 1)
    prelude = [np.array([spec, n_levels], np.int64), nb, K, np.asarray(params, np.int64)]
    return prelude, enc


def _decode_index(rd: Any, dec: Any, n_pool: int, n_items: int, layout_bounds: np.ndarray | None) -> np.ndarray:
    _, bounds = rc.read_bounds(rd, n_pool, layout_bounds)
    n_blocks = len(bounds) - 1
    n_levels = rd.one(limit=MAX_LEVELS)
    if n_levels < 1 or n_levels > n_blocks:
        raise PayloadCorruptError(f"{n_levels} density levels for {n_blocks} blocks")
    nb = rd.take(n_levels, limit=n_blocks)
    K = rd.take(n_levels, limit=n_items)
    if int(nb.sum()) != n_blocks or int(K.sum()) != n_items:
        raise PayloadCorruptError("level block counts or item counts do not add up")
    params = rd.take(3 * int((K > 0).sum()), limit=rc.P_ONE).reshape(-1, 3)
    level = rc.get(dec, rc.categorical(nb), n_blocks)
    if not np.array_equal(np.bincount(level, minlength=n_levels), nb):
        raise PayloadCorruptError("decoded level map does not match its counts")
    sizes = np.diff(bounds)
    off, S = _virtual(level, sizes, n_levels)
    if (K > S).any():
        raise PayloadCorruptError("a level holds more items than it has positions")
    by_level = np.argsort(level, kind="stable")  # the blocks of level ℓ, in pool order, are one slice
    first = np.r_[0, np.cumsum(nb)]
    parts = []
    for lv, (p_num, m, q_max) in zip(np.flatnonzero(K > 0).tolist(), params.tolist(), strict=True):
        v = np.cumsum(rc.get_gaps(dec, p_num, m, q_max, int(K[lv])) + 1) - 1
        if v[-1] >= S[lv]:
            raise PayloadCorruptError("a decoded index runs past the end of its level")
        blocks = by_level[first[lv] : first[lv + 1]]
        j = np.searchsorted(off[blocks], v, side="right") - 1
        parts.append(bounds[blocks[j]] + v - off[blocks[j]])
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------- label section
class _Blocks:
    """What every dominant-label threshold needs from one blocking, computed once per blocking."""

    def __init__(self, labels: np.ndarray, indices: np.ndarray, bounds: np.ndarray, k: int) -> None:
        _, self.inv = np.unique(np.searchsorted(bounds, indices, side="right") - 1, return_inverse=True)
        self.count = np.bincount(self.inv)
        self.dom = rc.dominant(labels, self.inv, len(self.count), k)
        self.match = labels == self.dom[self.inv]
        self.labels, self.k = labels, k

    def split(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dominant label of each dense block, item is in a dense block, item has its block's dominant)."""
        dense = self.count >= t
        item_dense = dense[self.inv]
        return self.dom[dense], item_dense, item_dense & self.match

    def estimate(self, t: int) -> float:
        """Estimated bits of the dominant mode with threshold ``t`` (entropies; a table ~1 byte an entry)."""
        doms, item_dense, is_dom = self.split(t)
        n_dense = int(item_dense.sum())
        bits = n_dense * float(_h(is_dom.sum() / n_dense)) if n_dense else 0.0
        for x in (doms, self.labels[item_dense & ~is_dom], self.labels[~item_dense]):
            c = np.bincount(x, minlength=self.k)
            bits += min(len(x) * log2(self.k), _ent(c) + 8.0 * int((c > 0).sum()))
        return bits


def _table_or_uniform(symbols: np.ndarray, k: int) -> np.ndarray | None:
    """The count table to code ``symbols`` with, or None when equal weights cost less than sending the table
    (noise labels, or k = 1,000 classes with few items)."""
    counts = np.bincount(symbols, minlength=k).astype(np.int64)
    table = len(zstandard.ZstdCompressor(level=19).compress(rc.prelude_bytes([counts])))
    return counts if _ent(counts) + 8.0 * table < len(symbols) * log2(k) else None


def _encode_dominant(blocks: _Blocks, lspec: int, t: int) -> _Section:
    cm = rc.library()
    labels, k = blocks.labels, blocks.k
    doms, item_dense, is_dom = blocks.split(t)
    parts = (doms, labels[item_dense & ~is_dom], labels[~item_dense])
    tables = [_table_or_uniform(x, k) for x in parts]
    mask = sum(1 << i for i, c in enumerate(tables) if c is None)
    p_num = rc.fixed_p(int(is_dom.sum()), max(int(item_dense.sum()), 1))
    enc = rc.Recorder()
    models = [rc.categorical(np.ones(k) if c is None else c) for c in tables]
    rc.put(enc, parts[0], models[0])
    if item_dense.any():
        flags = is_dom[item_dense].astype(np.int32)
        enc.encode(flags, cm.stream.model.Bernoulli(p_num / rc.P_ONE, perfect=False))
    rc.put(enc, parts[1], models[1])
    rc.put(enc, parts[2], models[2])
    prelude = [np.array([lspec, t, p_num, mask], np.int64)] + [c for c in tables if c is not None]
    return prelude, enc


def _decode_dominant(
    rd: Any, dec: Any, k: int, n_items: int, indices: np.ndarray, n_pool: int, layout_bounds: Any
) -> np.ndarray:
    cm = rc.library()
    _, bounds = rc.read_bounds(rd, n_pool, layout_bounds)
    t = rd.one(limit=max(n_items, 1))
    p_num = rd.one(limit=rc.P_ONE - 1)
    mask = rd.one(limit=7)
    tables = [None if mask >> i & 1 else rd.take(k, limit=n_items) for i in range(3)]
    if n_items == 0:
        return np.zeros(0, np.int64)
    if not (1 <= p_num < rc.P_ONE and t >= 1):
        raise PayloadCorruptError("dominant-label parameters out of range")
    ne, inv = np.unique(np.searchsorted(bounds, indices, side="right") - 1, return_inverse=True)
    dense = np.bincount(inv, minlength=len(ne)) >= t
    item_dense = dense[inv]
    n_dense = int(item_dense.sum())
    models = [rc.categorical(np.ones(k) if c is None else c) for c in tables]

    def take(i: int, n: int) -> np.ndarray:
        c = tables[i]
        if c is not None and int(c.sum()) != n:
            raise PayloadCorruptError("a label table does not match the number of labels it codes")
        return rc.get(dec, models[i], n)

    dom = np.zeros(len(ne), dtype=np.int64)
    dom[dense] = take(0, int(dense.sum()))
    is_dom = np.zeros(n_items, dtype=bool)
    if n_dense:
        bern = cm.stream.model.Bernoulli(p_num / rc.P_ONE, perfect=False)
        is_dom[item_dense] = dec.decode(bern, n_dense).astype(bool)
    other = item_dense & ~is_dom
    labels = dom[inv]
    labels[other] = take(1, int(other.sum()))
    labels[~item_dense] = take(2, n_items - n_dense)
    return labels


# ---------------------------------------------------------------- codec API
def _size(section: _Section) -> int:
    return len(rc.prelude_bytes(section[0])) + 4 * len(section[1].get_compressed())


def _encode_in(
    idx: np.ndarray,
    lab: np.ndarray,
    n_pool: int,
    k: int,
    layout_bounds: np.ndarray | None,
    tiers: np.ndarray | None = None,
) -> tuple[bytes, int, str]:
    """Best body for positions ``idx`` (sorted): every blocking and label model; returns (body, spec, mode)."""
    blockings = [(b, rc.fixed_bounds(n_pool, b)) for b in rc.block_candidates(n_pool)]
    if layout_bounds is not None:
        blockings.append((0, layout_bounds))
    best_idx = min((_encode_index(idx, bounds, spec) for spec, bounds in blockings), key=_size)
    trials: list[tuple[_Section, str]] = []
    for mode in ("iid", "uniform", "runs"):
        rec = rc.Recorder()
        trials.append(((v1.encode_labels(lab, k, mode, idx, enc=rec)[0], rec), mode))
    for spec, bounds in blockings:
        if spec == n_pool:
            continue
        blocks = _Blocks(lab, idx, bounds, k)
        t = min(THRESHOLDS, key=blocks.estimate)
        trials.append((_encode_dominant(blocks, spec, t), "dominant"))
    best_lab, lab_mode = min(trials, key=lambda r: _size(r[0]))
    prelude = best_idx[0] + best_lab[0]
    enc = best_lab[1].replay(best_idx[1].replay(rc.library().stream.queue.RangeEncoder()))
    if tiers is not None:
        counts = np.bincount(tiers, minlength=int(tiers.max()) + 1 if len(tiers) else 1).astype(np.int64)
        rc.put(enc, tiers, rc.categorical(counts))
        prelude.append(counts)
    raw = rc.prelude_bytes(prelude)
    packed = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(raw)
    head = rc.U32.pack(len(packed)) + packed if len(packed) < len(raw) else rc.U32.pack(RAW | len(raw)) + raw
    return head + enc.get_compressed().astype("<u4").tobytes(), int(best_idx[0][0][0]), lab_mode


def _split(body: bytes, *, n_pool: int, n_classes: int) -> tuple[bytes, np.ndarray]:
    """(prelude varint bytes, words)."""
    if len(body) < 4:
        raise PayloadCorruptError("entropy body too short")
    (head,) = rc.U32.unpack_from(body, 0)
    plen = head & ~RAW
    if 4 + plen > len(body) or (len(body) - 4 - plen) % 4:
        raise PayloadCorruptError("entropy prelude and words do not fit the body")
    words = np.frombuffer(body, dtype="<u4", offset=4 + plen).astype(np.uint32)
    if head & RAW:
        return body[4 : 4 + plen], words
    return rc.inflate_prelude(body[4 : 4 + plen], n_pool=n_pool, n_classes=n_classes), words


def encode(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    n_pool: int,
    n_classes: int,
    layout: PoolLayout | None = None,
    tiers: np.ndarray | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Encode in pool order and, given the pool's ``layout``, in its group order too; keep the smallest."""
    return rc.encode_orders(
        _encode_in, NAME, indices, labels, n_pool=n_pool, n_classes=n_classes, layout=layout, tiers=tiers
    )


def decode(
    codec: dict[str, Any],
    body: bytes,
    *,
    n_pool: int,
    n_items: int,
    n_classes: int,
    layout: PoolLayout | None = None,
    n_tiers: int = 1,
) -> rc.Sections:
    """Inverse of :func:`encode` → (indices, labels, tiers or None)."""
    layout_id = rc.check_layout(codec, layout, n_pool)
    mode = codec.get("labels")
    if mode not in LABEL_MODES:
        raise PayloadVersionError(f"unknown label model {mode!r} in codec {NAME}")
    raw, words = _split(body, n_pool=n_pool, n_classes=n_classes)

    def read(rd: rc.Reader, bounds: np.ndarray | None) -> rc.Sections:
        dec = rc.library().stream.queue.RangeDecoder(words)  # one stream: index, labels, tiers
        indices = _decode_index(rd, dec, n_pool, n_items, bounds)
        if mode == "dominant":
            labels = _decode_dominant(rd, dec, n_classes, n_items, indices, n_pool, bounds)
        else:
            labels = v1.decode_labels(rd, dec, n_classes, n_items, mode, indices, n_pool, bounds)
        return indices, labels, rc.decode_tiers(rd, dec, n_tiers, n_items) if n_tiers > 1 else None

    return rc.decode_sections(raw, layout, layout_id, read)
