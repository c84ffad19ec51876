"""A 64-bit perceptual fingerprint per pool item: the same picture re-encoded or resized keeps (nearly) the same
bits, another picture does not.

A client's copy of a pool is rarely byte-identical to the server's (JPEG re-encodes, 64 px or 32 px copies,
Parquet or tar repacks), so the exact item hash alone would throw away every such copy. The fingerprint is a
DCT hash (as ``imagehash.phash``, our own few lines of numpy so both sides compute it the same way without
scipy): grey, box-resized to 32×32, 2-D DCT-II, the 8×8 lowest frequencies compared with their median. A
Hamming distance of at most ``MATCH_DISTANCE`` of 64 bits means "the same picture"; the threshold is
calibrated in ``bench/own_copy.py`` (docs/benchmarks.md, "A client's own copy").
"""

from __future__ import annotations

from typing import Any

import numpy as np

FINGERPRINT_KIND = "dct64-v1"
FINGERPRINT_BYTES = 8
MATCH_DISTANCE = 10  # calibrated on the photo world: see the module docstring
_SIDE = 32
_LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix: ``D @ x @ D.T`` is the 2-D transform of an n×n block."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return np.asarray(d, dtype=np.float64)


_D = _dct_matrix(_SIDE)[:_LOW]  # only the 8 lowest frequencies are ever used


def _grey32(image: Any) -> np.ndarray:
    """A PIL image or a uint8 (H, W[, C]) array → 32×32 float grey, box-filtered (every source pixel counts,
    so a 64 px and a 32 px copy of one picture land on nearly the same block)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        image = Image.fromarray(np.ascontiguousarray(arr))
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image.resize((_SIDE, _SIDE), Image.Resampling.BOX), dtype=np.float64)


def fingerprint(image: Any) -> bytes:
    """The 8-byte fingerprint of one decoded picture (a PIL image or a uint8 array)."""
    low = _D @ _grey32(image) @ _D.T
    bits = (low > np.median(low)).reshape(-1)
    return np.packbits(bits).tobytes()


def decode_for_fingerprint(data: bytes) -> Any:
    """A file's picture as the fingerprint reads it: JPEGs are decoded at a reduced scale (``draft``, at
    least 64 px a side), which makes fingerprinting ImageNet's 1.28M files several times cheaper and changes
    nothing the 32×32 block can see. Server and client both read files through here."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.draft("L", (2 * _SIDE, 2 * _SIDE))
    return im.convert("L")


def file_fingerprint(data: bytes) -> bytes:
    """The fingerprint of an image file's bytes (raises ``OSError`` when they do not decode)."""
    return fingerprint(decode_for_fingerprint(data))


def fingerprints(images: np.ndarray) -> np.ndarray:
    """(n, 8) uint8 fingerprints of uint8 images (n, H, W[, C])."""
    out = np.empty((len(images), FINGERPRINT_BYTES), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.frombuffer(fingerprint(im), dtype=np.uint8)
    return out


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def distance(a: np.ndarray | bytes, b: np.ndarray | bytes) -> np.ndarray:
    """Hamming distance in bits between fingerprints (rows of (n, 8) uint8, or single 8-byte values)."""
    x = np.frombuffer(a, dtype=np.uint8) if isinstance(a, bytes) else np.asarray(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8) if isinstance(b, bytes) else np.asarray(b, dtype=np.uint8)
    return np.asarray(_POPCOUNT[np.bitwise_xor(x, y)].sum(axis=-1), dtype=np.int64)
