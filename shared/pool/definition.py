"""A pool's **definition**: what the server publishes so a client can attach its own copy of the pool.

Payload positions mean "item i of the definition": its ordered keys and groups (which also fix the coding
layout), each item's exact hash (the manifest's, so the ``pool_id`` is recomputed from the definition itself)
and a perceptual fingerprint (``fingerprint.py``) that lets a re-encoded or resized copy of a picture pass as
the same picture. A client's files never decide what a position means; they are only looked up by key.

Wire form (``application/vnd.plada.pool-definition``)::

    b"PLADADEF" | u8 format version (1) | u32 LE header length | header JSON | zstd sections, in header order

The header names the pool, its ``pool_id``, ``n_items`` and each section's raw and stored length; sections are
``keys`` (newline-joined UTF-8), ``hashes`` (n×16), and when present ``groups``/``clusters`` (n×int32 LE) and
``fingerprints`` (n×8). The bytes are untrusted: the decoder caps the total size and the key count before it
allocates anything, inflates each section to exactly its announced size, refuses trailing bytes, refuses keys
that could leave a folder (absolute, ``..``, backslashes, NUL) and recomputes the ``pool_id``. The sha256 of
the bytes is their ETag and what the server signs (under its own signing domain).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.errors import DefinitionError
from plada.shared.pool.fingerprint import FINGERPRINT_BYTES, FINGERPRINT_KIND
from plada.shared.pool.manifest import ITEM_HASH_BYTES, KeyTable, PoolManifest

MAGIC = b"PLADADEF"
FORMAT_VERSION = 1
MEDIA_TYPE = "application/vnd.plada.pool-definition"
MAX_DEFINITION_BYTES = 2 << 30  # 2 GiB: ImageNet-21K's definition is ~0.4 GB (docs/operations.md)
MAX_DEFINITION_ITEMS = 20_000_000  # ImageNet-21K has 14.2M
MAX_KEY_BYTES = 1024  # per key on average; the keys section is capped at n × this
MAX_HEADER_BYTES = 8 << 20  # group names of 21,841 synsets fit many times over
FINGERPRINTS_FILE = "fingerprints.npy"
_ZSTD_LEVEL = 9


@dataclass(frozen=True)
class PoolDefinition:
    """The manifest (keys, hashes, groups, clusters) plus what a copy needs to be checked against it."""

    manifest: PoolManifest
    image_shape: tuple[int, int, int]
    hash_kind: str  # "file": BLAKE2b of the file's bytes; "pixels": of the decoded uint8 HWC pixels
    fingerprints: np.ndarray | None = None  # (n, 8) uint8
    group_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.hash_kind not in ("file", "pixels"):
            raise ValueError("hash_kind must be 'file' or 'pixels'")
        fp = self.fingerprints
        if fp is not None and (fp.shape != (len(self.manifest), FINGERPRINT_BYTES) or fp.dtype != np.uint8):
            raise ValueError(f"fingerprints must be (n, {FINGERPRINT_BYTES}) uint8")

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def pool_id(self) -> str:
        return self.manifest.pool_id

    def __len__(self) -> int:
        return len(self.manifest)


def definition_of(pool: Any) -> PoolDefinition:
    """The definition of a pool folder the server holds (fingerprints from ``fingerprints.npy`` when computed)."""
    fp_path = Path(pool.root) / FINGERPRINTS_FILE
    fps = None
    if fp_path.is_file():
        fps = np.load(fp_path, allow_pickle=False)
        if fps.shape != (len(pool), FINGERPRINT_BYTES):
            fps = None  # stale (the pool was rebuilt): served without, and `pool fingerprint` redoes them
    names = pool.info.get("group_names")
    return PoolDefinition(
        manifest=pool.manifest,
        image_shape=pool.image_shape,
        hash_kind="pixels" if pool.info.get("kind") == "array" else "file",
        fingerprints=fps,
        group_names=tuple(str(n) for n in names) if names else None,
    )


def _sections(d: PoolDefinition) -> list[tuple[str, bytes]]:
    m = d.manifest
    out = [("keys", m.keys.blob), ("hashes", np.ascontiguousarray(m.hashes).tobytes())]
    if m.groups is not None:
        out.append(("groups", np.asarray(m.groups, dtype="<i4").tobytes()))
    if m.clusters is not None:
        out.append(("clusters", np.asarray(m.clusters, dtype="<i4").tobytes()))
    if d.fingerprints is not None:
        out.append(("fingerprints", np.ascontiguousarray(d.fingerprints).tobytes()))
    return out


def encode_definition(d: PoolDefinition) -> bytes:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    stored = [(name, len(raw), cctx.compress(raw)) for name, raw in _sections(d)]
    header = {
        "name": d.name,
        "pool_id": d.pool_id,
        "n_items": len(d),
        "image_shape": list(d.image_shape),
        "hash_kind": d.hash_kind,
        "fingerprint": FINGERPRINT_KIND if d.fingerprints is not None else None,
        "group_names": list(d.group_names) if d.group_names else None,
        "sections": [{"name": n, "raw": r, "stored": len(c)} for n, r, c in stored],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<BI", FORMAT_VERSION, len(head)) + head + b"".join(c for _, _, c in stored)


def definition_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_definition_header(data: bytes, *, max_bytes: int = MAX_DEFINITION_BYTES) -> dict[str, Any]:
    """The header alone, checked (size, magic, version, counts) before anything is allocated."""
    if len(data) > max_bytes:
        raise DefinitionError(f"pool definition is {len(data):,} bytes, over the cap of {max_bytes:,}")
    if len(data) < len(MAGIC) + 5 or data[: len(MAGIC)] != MAGIC:
        raise DefinitionError("not a plada pool definition (bad magic)")
    version, hlen = struct.unpack_from("<BI", data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise DefinitionError(f"pool definition format {version} is not supported (this client reads 1)")
    start = len(MAGIC) + 5
    if hlen > MAX_HEADER_BYTES or start + hlen > len(data):
        raise DefinitionError("pool definition header is truncated or oversized")
    try:
        header = json.loads(data[start : start + hlen])
        n = int(header["n_items"])
        sections = [(str(s["name"]), int(s["raw"]), int(s["stored"])) for s in header["sections"]]
        h, w, c = (int(v) for v in header["image_shape"])
        str(header["pool_id"]), str(header["name"]), str(header["hash_kind"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DefinitionError(f"pool definition header is malformed: {exc}") from exc
    header["_start"] = start + hlen
    header["_sections"] = sections
    if n <= 0:
        raise DefinitionError("pool definition has no items")
    if not (0 < h <= 65536 and 0 < w <= 65536 and c in (1, 3)):
        raise DefinitionError(f"pool definition image shape {header['image_shape']} is not an image shape")
    return dict(header)


def decode_definition(
    data: bytes, *, max_bytes: int = MAX_DEFINITION_BYTES, max_items: int = MAX_DEFINITION_ITEMS
) -> PoolDefinition:
    """Parse and check untrusted definition bytes (see the module docstring for every check)."""
    import zstandard

    header = read_definition_header(data, max_bytes=max_bytes)
    n = int(header["n_items"])
    if n > max_items:
        raise DefinitionError(f"pool definition names {n:,} items, over the cap of {max_items:,}")
    expected = {
        "keys": None,
        "hashes": n * ITEM_HASH_BYTES,
        "groups": 4 * n,
        "clusters": 4 * n,
        "fingerprints": n * FINGERPRINT_BYTES,
    }
    pos, raw_sections = int(header["_start"]), {}
    dctx = zstandard.ZstdDecompressor()
    for name, raw, stored in header["_sections"]:
        if name not in expected or name in raw_sections:
            raise DefinitionError(f"pool definition has an unknown or repeated section {name[:40]!r}")
        want = expected[name]
        if (want is not None and raw != want) or (want is None and not 0 < raw <= n * MAX_KEY_BYTES):
            raise DefinitionError(f"pool definition section {name!r} announces {raw:,} bytes for {n:,} items")
        if stored < 0 or pos + stored > len(data):
            raise DefinitionError(f"pool definition section {name!r} is truncated")
        try:
            body = dctx.decompress(data[pos : pos + stored], max_output_size=raw)
        except zstandard.ZstdError as exc:
            raise DefinitionError(f"pool definition section {name!r} does not inflate: {exc}") from exc
        if len(body) != raw:
            raise DefinitionError(f"pool definition section {name!r} inflates to {len(body):,}, not {raw:,} bytes")
        raw_sections[name] = body
        pos += stored
    if pos != len(data):
        raise DefinitionError(f"pool definition has {len(data) - pos:,} trailing bytes")
    if "keys" not in raw_sections or "hashes" not in raw_sections:
        raise DefinitionError("pool definition lacks its keys or hashes")
    keys = KeyTable(raw_sections["keys"])
    if len(keys) != n:
        raise DefinitionError(f"pool definition holds {len(keys):,} keys for {n:,} items")
    check_keys(keys)

    def ints(name: str) -> np.ndarray | None:
        b = raw_sections.get(name)
        return None if b is None else np.frombuffer(b, dtype="<i4").astype(np.int32)

    manifest = PoolManifest(
        name=str(header["name"])[:200],
        keys=keys,
        hashes=np.frombuffer(raw_sections["hashes"], dtype=np.uint8).reshape(n, ITEM_HASH_BYTES).copy(),
        groups=ints("groups"),
        clusters=ints("clusters"),
    )
    if manifest.pool_id != header["pool_id"]:
        raise DefinitionError(
            f"pool definition's keys and hashes give pool {manifest.pool_id[:16]}…, not {str(header['pool_id'])[:16]}…"
        )
    fps = raw_sections.get("fingerprints")
    if fps is not None and header.get("fingerprint") != FINGERPRINT_KIND:
        raise DefinitionError(f"pool definition fingerprints are {header.get('fingerprint')!r}, not {FINGERPRINT_KIND}")
    names = header.get("group_names")
    try:
        return PoolDefinition(
            manifest=manifest,
            image_shape=tuple(int(v) for v in header["image_shape"]),  # type: ignore[arg-type]
            hash_kind=str(header["hash_kind"]),
            fingerprints=None if fps is None else np.frombuffer(fps, dtype=np.uint8).reshape(n, FINGERPRINT_BYTES),
            group_names=tuple(str(g) for g in names) if isinstance(names, list) else None,
        )
    except ValueError as exc:
        raise DefinitionError(f"pool definition is malformed: {exc}") from exc


def check_keys(keys: KeyTable) -> None:
    """Refuse keys that could name a place outside a copy's folder: absolute, ``..`` parts, backslashes, NUL.
    Checked on the whole blob at once, so 14.2M keys cost a fraction of a second."""
    lines = b"\n" + keys.blob + b"\n"
    rules = (
        (b"\0", "holds a NUL byte"),
        (b"\\", "holds a backslash"),
        (b"\n/", "is an absolute path"),
        (b"/../", "climbs out with '..'"),
        (b"\n../", "climbs out with '..'"),
        (b"/..\n", "climbs out with '..'"),
        (b"\n..\n", "climbs out with '..'"),
    )
    for bad, why in rules:
        at = lines.find(bad)
        if at >= 0:
            k = lines.count(b"\n", 0, at + 1) - 1  # the key the match starts in
            raise DefinitionError(f"unsafe key in pool definition: {keys[max(k, 0)][:120]!r} {why}")
