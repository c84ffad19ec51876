"""The paper's index/label codec: bitmap or delta list, smallest integer dtypes, one Zstandard-19 frame.

Both layouts are built and the smaller body is kept, exactly as PLADA describes. The decoder knows the exact
decompressed size before it inflates anything, so hostile bodies cannot make it allocate without bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zstandard

from plada.shared.codecs.rangecoding import inflate
from plada.shared.errors import PayloadCorruptError, PayloadVersionError
from plada.shared.pool import PoolLayout

NAME = "paper-v1"
FORMAT = 1  # the payload container version a client needs to read it
CARRIES_TIERS = False
ZSTD_LEVEL = 19
_DTYPES: dict[str, np.dtype[Any]] = {"u1": np.dtype("<u1"), "u2": np.dtype("<u2"), "u4": np.dtype("<u4")}


def _smallest_dtype(max_value: int) -> str:
    for name, dt in _DTYPES.items():
        if max_value <= np.iinfo(dt).max:
            return name
    raise ValueError(f"value {max_value} does not fit in 32 bits")


def label_dtype_for(n_classes: int) -> str:
    """uint8 when k ≤ 256, else uint16 (the paper's rule)."""
    return "u1" if n_classes <= 256 else "u2"


def _bitmap(indices: np.ndarray, n_pool: int) -> bytes:
    bits = np.zeros(n_pool, dtype=np.uint8)
    bits[indices] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def _gaps(indices: np.ndarray) -> tuple[str, bytes]:
    if len(indices) == 0:
        return "u1", b""
    gaps = np.diff(indices, prepend=0).astype(np.int64)
    name = _smallest_dtype(int(gaps.max()))
    return name, gaps.astype(_DTYPES[name]).tobytes()


def encode(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    n_pool: int,
    n_classes: int,
    layout: PoolLayout | None = None,
    tiers: np.ndarray | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Encode sorted unique ``indices`` and their ``labels``; returns (codec header dict, body bytes). The
    paper's format has no tiers and always codes in pool order (``layout`` is accepted and not used)."""
    if tiers is not None and len(tiers) and int(np.max(tiers)) > 0:
        raise ValueError(f"codec {NAME} cannot carry priority tiers")
    ldt = label_dtype_for(n_classes)
    label_bytes = labels.astype(_DTYPES[ldt]).tobytes()
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
    bitmap_body = cctx.compress(_bitmap(indices, n_pool) + label_bytes)
    gdt, gap_bytes = _gaps(indices)
    delta_body = cctx.compress(gap_bytes + label_bytes)
    if len(delta_body) < len(bitmap_body):
        return {
            "name": NAME,
            "index": "delta",
            "index_dtype": gdt,
            "label_dtype": ldt,
            "zstd_level": ZSTD_LEVEL,
        }, delta_body
    return {
        "name": NAME,
        "index": "bitmap",
        "index_dtype": None,
        "label_dtype": ldt,
        "zstd_level": ZSTD_LEVEL,
    }, bitmap_body


def decode(
    codec: dict[str, Any],
    body: bytes,
    *,
    n_pool: int,
    n_items: int,
    n_classes: int,
    layout: PoolLayout | None = None,
    n_tiers: int = 1,
) -> tuple[np.ndarray, np.ndarray, None]:
    """Inverse of :func:`encode`; raises ``PayloadError`` subclasses on anything malformed."""
    layout = codec.get("index")
    ldt_name = codec.get("label_dtype")
    if layout not in ("bitmap", "delta") or ldt_name not in ("u1", "u2"):
        raise PayloadVersionError(f"unknown layout in codec {NAME}: index={layout!r} labels={ldt_name!r}")
    ldt = _DTYPES[ldt_name]
    if layout == "bitmap":
        index_size = (n_pool + 7) // 8
        idt = None
    else:
        idt_name = codec.get("index_dtype")
        if idt_name not in _DTYPES:
            raise PayloadVersionError(f"unknown index dtype {idt_name!r}")
        idt = _DTYPES[idt_name]
        index_size = n_items * idt.itemsize
    expected = index_size + n_items * ldt.itemsize
    if n_tiers != 1:
        raise PayloadCorruptError(f"codec {NAME} cannot carry priority tiers")
    raw = inflate(body, what="body", limit=expected, exact=expected)
    index_part, label_part = raw[:index_size], raw[index_size:]
    if layout == "bitmap":
        bits = np.unpackbits(np.frombuffer(index_part, dtype=np.uint8), bitorder="little")
        if bits[n_pool:].any():
            raise PayloadCorruptError("bitmap has bits set past the end of the pool")
        indices = np.flatnonzero(bits[:n_pool]).astype(np.int64)
        if len(indices) != n_items:
            raise PayloadCorruptError(f"bitmap holds {len(indices)} items, header says {n_items}")
    else:
        assert idt is not None
        gaps = np.frombuffer(index_part, dtype=idt).astype(np.int64)
        if n_items and (gaps[1:] <= 0).any():
            raise PayloadCorruptError("delta list is not strictly increasing")
        indices = np.cumsum(gaps)
        if n_items and indices[-1] >= n_pool:
            raise PayloadCorruptError("delta list points past the end of the pool")
    labels = np.frombuffer(label_part, dtype=ldt).astype(np.int64)
    if n_items and labels.max() >= n_classes:
        raise PayloadCorruptError(f"label {int(labels.max())} out of range for {n_classes} classes")
    return indices, labels, None
