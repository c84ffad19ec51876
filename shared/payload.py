"""The payload container: what the server ships and the client trusts only after checking.

Layout (little-endian; ``docs/payload-format.md`` is the byte-exact spec)::

    MAGIC "PLDA" | u8 format version | u8 flags (0) | u32 header length | header (UTF-8 JSON)
    | u32 body length | body (codec bytes) | sha256 of everything before it (32 bytes)

The header is canonical JSON (sorted keys, no spaces), so the same payload always has the same bytes and the
version's content address (sha256 of the whole file) is stable.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from plada.shared.codecs import Codec, registry
from plada.shared.errors import (
    PayloadCorruptError,
    PayloadError,
    PayloadNeedsPoolError,
    PayloadVersionError,
    PoolMismatchError,
)
from plada.shared.pool import Pool, PoolLayout

MAGIC = b"PLDA"
FORMAT_VERSION = 3  # the newest this code writes; a payload's version follows from its codec (see _FORMAT_OF)
SUPPORTED_FORMAT_VERSIONS = frozenset({1, 2, 3})
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20
MAX_POOL_ITEMS = (1 << 31) - 1  # bounds what a hostile header can make a decoder allocate (bitmap ≤ 256 MiB)
MAX_ITEMS = 1 << 26
MAX_TIERS = 16
MAX_CLASSES = 65_535
MEDIA_TYPE = "application/vnd.plada.payload"
_PREFIX = struct.Struct("<4sBBI")
_U32 = struct.Struct("<I")
_DIGEST = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CODECS: dict[str, Codec] = registry()
# The container's version follows from its codec (Codec.FORMAT): a client that predates a codec refuses the
# payload with "format version N is not supported" (an upgrade hint) instead of misreading it.
CODECS = ("auto", *_CODECS)


@dataclass(frozen=True)
class Payload:
    """Kept pool indices (sorted, unique) and their hard labels, bound to one pool by ``pool_id``."""

    indices: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    pool_id: str
    n_pool: int
    task: str
    version: int
    pool_name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tiers: np.ndarray | None = None  # priority tier per item (0 = most important), for progressive training
    sha256: str | None = field(default=None, compare=False)  # content address of the bytes it was decoded from

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices, dtype=np.int64)
        lab = np.asarray(self.labels, dtype=np.int64)
        tiers = None if self.tiers is None else np.asarray(self.tiers, dtype=np.int64)
        if tiers is not None and (
            tiers.shape != idx.shape or (len(tiers) and not 0 <= tiers.min() <= tiers.max() < MAX_TIERS)
        ):
            raise ValueError(f"tiers must be one value in 0..{MAX_TIERS - 1} per item")
        if idx.ndim != 1 or lab.shape != idx.shape:
            raise ValueError("indices and labels must be 1-D arrays of the same length")
        if not 0 < self.n_pool <= MAX_POOL_ITEMS:
            raise ValueError(f"n_pool must be in 1..{MAX_POOL_ITEMS}")
        if not 1 <= len(self.classes) <= MAX_CLASSES:
            raise ValueError(f"need 1..{MAX_CLASSES} classes")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_pool):
            raise ValueError("index out of pool range")
        if len(lab) and (lab.min() < 0 or lab.max() >= len(self.classes)):
            raise ValueError("label out of class range")
        order = np.argsort(idx, kind="stable")
        idx, lab = idx[order], lab[order]
        if tiers is not None:
            tiers = tiers[order] if len(tiers) and tiers.max() > 0 else None  # one tier = no tiers
        if len(idx) > 1 and (np.diff(idx) == 0).any():
            raise ValueError("indices must be unique")
        if not _HEX64.match(self.pool_id):
            raise ValueError("pool_id must be 64 lowercase hex characters")
        if self.version < 1:
            raise ValueError("version must be >= 1")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "labels", lab)
        object.__setattr__(self, "tiers", tiers)
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def n_tiers(self) -> int:
        return 1 if self.tiers is None or len(self.tiers) == 0 else int(self.tiers.max()) + 1

    def prefix(self, max_tier: int) -> Payload:
        """The items of tiers 0..max_tier: what a client with less compute trains on."""
        if self.tiers is None:
            return self
        keep = self.tiers <= max_tier
        return replace(self, indices=self.indices[keep], labels=self.labels[keep], tiers=self.tiers[keep])

    def __len__(self) -> int:
        return len(self.indices)

    def header(self) -> dict[str, Any]:
        """The header without codec fields, e.g. for ``plada-client inspect``."""
        return {
            "pool_id": self.pool_id,
            "pool_name": self.pool_name,
            "n_pool": self.n_pool,
            "task": self.task,
            "version": self.version,
            "classes": list(self.classes),
            "n_items": len(self),
            "meta": self.meta,
        } | ({"n_tiers": self.n_tiers} if self.n_tiers > 1 else {})


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_payload(payload: Payload, *, codec: str = "auto", layout: PoolLayout | None = None) -> bytes:
    """Encode ``payload``; ``auto`` tries every codec and keeps the smallest (ties go to the oldest format, which
    the most clients can read: paper-v1, then entropy-v1). With the pool's ``layout`` the range coders may code
    in the pool's group order (then decoding needs the pool too). The result is deterministic for equal inputs."""
    if codec == "auto":
        names = [n for n, c in _CODECS.items() if payload.n_tiers == 1 or c.CARRIES_TIERS]
        return min((encode_payload(payload, codec=name, layout=layout) for name in names), key=len)
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {list(CODECS)}")
    impl = _CODECS[codec]
    if payload.n_tiers > 1 and not impl.CARRIES_TIERS:
        tiered = [n for n, c in _CODECS.items() if c.CARRIES_TIERS]
        raise ValueError(f"codec {codec} cannot carry priority tiers; use {' or '.join(tiered[-1:])} or auto")
    codec_info, body = impl.encode(
        payload.indices,
        payload.labels,
        n_pool=payload.n_pool,
        n_classes=len(payload.classes),
        layout=layout,
        tiers=payload.tiers,
    )
    header = payload.header() | {"codec": codec_info}
    hbytes = _canonical_json(header)
    if len(hbytes) > MAX_HEADER_BYTES or len(body) > MAX_BODY_BYTES:
        raise ValueError("payload header or body exceeds the format's limits")
    out = _PREFIX.pack(MAGIC, impl.FORMAT, 0, len(hbytes)) + hbytes + _U32.pack(len(body)) + body
    return bytes(out + hashlib.sha256(out).digest())


def _need(data: bytes, pos: int, n: int, what: str) -> None:
    if pos + n > len(data):
        raise PayloadCorruptError(f"payload truncated: {what} needs {n} bytes at offset {pos}, file has {len(data)}")


def read_header(data: bytes) -> tuple[dict[str, Any], int, int]:
    """Parse and check the fixed prefix, header and lengths; returns (header, body offset, body length).

    Does not verify the checksum; :func:`decode_payload` does.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("payload data must be bytes")
    data = bytes(data)
    _need(data, 0, _PREFIX.size, "the fixed prefix")
    magic, fmt, flags, hlen = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise PayloadCorruptError(f"not a plada payload (magic {magic!r}, expected {MAGIC!r})")
    if fmt not in SUPPORTED_FORMAT_VERSIONS:
        raise PayloadVersionError(
            f"payload format version {fmt} is not supported by this client "
            f"(supports {sorted(SUPPORTED_FORMAT_VERSIONS)})"
        )
    if flags != 0:
        raise PayloadVersionError(f"unknown payload flags {flags:#04x}")
    if not 2 <= hlen <= MAX_HEADER_BYTES:
        raise PayloadCorruptError(f"header length {hlen} out of range")
    pos = _PREFIX.size
    _need(data, pos, hlen + _U32.size, "the header")
    try:
        header = json.loads(data[pos : pos + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadCorruptError(f"header is not UTF-8 JSON: {exc}") from exc
    pos += hlen
    (blen,) = _U32.unpack_from(data, pos)
    pos += _U32.size
    if blen > MAX_BODY_BYTES:
        raise PayloadCorruptError(f"body length {blen} exceeds the limit {MAX_BODY_BYTES}")
    _need(data, pos, blen + _DIGEST, "the body and checksum")
    if len(data) != pos + blen + _DIGEST:
        raise PayloadCorruptError(f"{len(data) - pos - blen - _DIGEST} trailing bytes after the checksum")
    _check_header(header)
    if fmt != _CODECS[header["codec"]["name"]].FORMAT:
        raise PayloadVersionError(f"codec {header['codec']['name']!r} is not valid in a format-{fmt} payload")
    return header, pos, blen


def _check_header(h: Any) -> None:
    if not isinstance(h, dict):
        raise PayloadCorruptError("header is not a JSON object")
    spec: dict[str, type | tuple[type, ...]] = {
        "pool_id": str,
        "pool_name": str,
        "n_pool": int,
        "task": str,
        "version": int,
        "classes": list,
        "n_items": int,
        "meta": dict,
        "codec": dict,
    }
    for key, typ in spec.items():
        if key not in h:
            raise PayloadCorruptError(f"header lacks {key!r}")
        if not isinstance(h[key], typ) or isinstance(h[key], bool):
            raise PayloadCorruptError(f"header field {key!r} has the wrong type")
    if not _HEX64.match(h["pool_id"]):
        raise PayloadCorruptError("header pool_id is not 64 hex characters")
    if (
        not 0 < h["n_pool"] <= MAX_POOL_ITEMS
        or not 0 <= h["n_items"] <= min(h["n_pool"], MAX_ITEMS)
        or h["version"] < 1
    ):
        raise PayloadCorruptError("header counts out of range")
    classes = h["classes"]
    if not 1 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) for c in classes):
        raise PayloadCorruptError("header classes must be 1..65535 strings")
    if h["codec"].get("name") not in _CODECS:
        raise PayloadVersionError(f"unknown codec {h['codec'].get('name')!r} (known: {sorted(_CODECS)})")


def decode_payload(data: bytes, *, expected_sha256: str | None = None, layout: PoolLayout | None = None) -> Payload:
    """Decode and fully verify ``data``; every malformed input raises a ``PayloadError`` subclass."""
    if expected_sha256 is not None and payload_sha256(data) != expected_sha256:
        raise PayloadCorruptError("payload sha256 does not match the expected content address")
    header, pos, blen = read_header(data)
    data = bytes(data)
    if hashlib.sha256(data[: pos + blen]).digest() != data[pos + blen :]:
        raise PayloadCorruptError("payload checksum mismatch (corrupted in transit or on disk)")
    name = header["codec"]["name"]
    n_tiers = header.get("n_tiers", 1)
    if not isinstance(n_tiers, int) or isinstance(n_tiers, bool) or not 1 <= n_tiers <= MAX_TIERS:
        raise PayloadCorruptError(f"header n_tiers must be 1..{MAX_TIERS}")
    if n_tiers > 1 and not _CODECS[name].CARRIES_TIERS:
        raise PayloadCorruptError(f"codec {name} cannot carry priority tiers")
    indices, labels, tiers = _CODECS[name].decode(
        header["codec"],
        data[pos : pos + blen],
        n_pool=header["n_pool"],
        n_items=header["n_items"],
        n_classes=len(header["classes"]),
        layout=layout,
        n_tiers=n_tiers,
    )
    try:
        return Payload(
            indices=indices,
            labels=labels,
            tiers=tiers,
            classes=tuple(header["classes"]),
            pool_id=header["pool_id"],
            n_pool=header["n_pool"],
            task=header["task"],
            version=header["version"],
            pool_name=header["pool_name"],
            meta=header["meta"],
            sha256=payload_sha256(data),
        )
    except ValueError as exc:
        raise PayloadError(f"payload fields are inconsistent: {exc}") from exc


def payload_floor(
    classes: tuple[str, ...], *, task: str, pool_id: str, n_pool: int, pool_name: str, codec: str, selector: str
) -> int:
    """Bytes of an empty payload of this task (its header: the class names dominate): no ``max_bytes`` below it
    can hold anything. The intake refuses such a spec at once; the pipeline names it when nothing fits. Raises
    ``ValueError`` when the header alone is over the format's limit."""
    empty = np.zeros(0, np.int64)
    return len(
        encode_payload(
            Payload(
                indices=empty,
                labels=empty,
                classes=classes,
                pool_id=pool_id,
                n_pool=n_pool,
                task=task,
                version=1,
                pool_name=pool_name,
                meta={"selector": selector},
            ),
            codec=codec,
        )
    )


def payload_sha256(data: bytes) -> str:
    """The content address of an encoded payload (used as version id and HTTP ETag)."""
    return hashlib.sha256(data).hexdigest()


def inspect_payload(data: bytes, *, layout: PoolLayout | None = None) -> dict[str, Any]:
    """Header plus verification facts, for humans and ``--json`` scripting.

    A payload coded in its pool's group order is fully decoded only when ``layout`` is given; without it the
    checksum is still verified and ``decoded`` is False.
    """
    header, _, blen = read_header(data)
    info = header | {
        "format_version": data[4],
        "bytes": len(data),
        "body_bytes": blen,
        "sha256": payload_sha256(data),
    }
    try:
        payload = decode_payload(data, layout=layout)
    except PayloadNeedsPoolError:
        if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
            raise PayloadCorruptError("payload checksum mismatch (corrupted in transit or on disk)") from None
        return info | {"checksum_ok": True, "decoded": False}
    counts = np.bincount(payload.labels, minlength=len(payload.classes)).tolist()
    return info | {"checksum_ok": True, "decoded": True, "label_counts": counts}


def check_pool(payload: Payload | dict[str, Any], pool: Pool) -> None:
    """Refuse a payload (or a payload header) made for another pool, or another ordering of it."""
    h = payload if isinstance(payload, dict) else payload.header()
    if h["pool_id"] != pool.pool_id or h["n_pool"] != len(pool):
        raise PoolMismatchError(
            f"payload is for pool {h.get('pool_name') or '?'} ({h['pool_id'][:16]}…, "
            f"{h['n_pool']:,} items) but the local pool is {pool.name} "
            f"({pool.pool_id[:16]}…, {len(pool):,} items)"
        )
