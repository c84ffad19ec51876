"""A pool's identity: ordered keys, a 128-bit BLAKE2b hash per item, and the ``pool_id`` derived from both.

Indices in a payload mean nothing unless server and client hold the same items in the same order; the
manifest pins that order and the ``pool_id`` names it (never chosen, always computed).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from plada.shared.errors import PoolError
from plada.shared.files import atomic_write

POOL_FORMAT = "plada-pool"
POOL_FORMAT_VERSION = 1
ITEM_HASH_BYTES = 16


def item_hash(data: bytes) -> bytes:
    """128-bit BLAKE2b of an item's canonical bytes (pixel bytes for arrays, file bytes for folders)."""
    return hashlib.blake2b(data, digest_size=ITEM_HASH_BYTES).digest()


class KeyTable(Sequence[str]):
    """Item keys as one newline-joined UTF-8 blob plus start offsets.

    ImageNet-21K has 14.2M keys: as a numpy str array that is 4 bytes a character (~2.8 GB), here ~0.7 GB, and
    the pool_id hashes the blob as it is. Keys never contain newlines, so the blob alone is the stored form."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        if not blob:
            self._starts = np.zeros(0, np.int64)
            self._ends = self._starts
            return
        nl = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 10)
        self._starts = np.r_[0, nl + 1].astype(np.int64)
        self._ends = np.r_[nl, len(blob)].astype(np.int64)

    @classmethod
    def from_strings(cls, keys: Iterable[str]) -> KeyTable:
        keys = [str(k) for k in keys]
        if any("\n" in k for k in keys):
            raise ValueError("keys must not contain newlines")
        if not keys:
            return cls(b"")
        if any(k == "" for k in keys):
            raise ValueError("keys must not be empty")
        return cls("\n".join(keys).encode("utf-8"))

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.blob[self._starts[i] : self._ends[i]].decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyTable):
            return self.blob == other.blob
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose: tables compare by content


def _as_keys(keys: KeyTable | np.ndarray | Sequence[str]) -> KeyTable:
    return keys if isinstance(keys, KeyTable) else KeyTable.from_strings(keys)


@dataclass(frozen=True)
class PoolManifest:
    """Ordered keys, per-item hashes and optional group ids; ``pool_id`` is derived, never chosen."""

    name: str
    keys: KeyTable  # (N,) item keys; any sequence of str is converted
    hashes: np.ndarray  # (N, 16) uint8
    groups: np.ndarray | None = None  # (N,) int32, e.g. the synset folder
    clusters: np.ndarray | None = None  # (N,) int32, a coding order computed once per pool (e.g. k-means)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _as_keys(self.keys))
        if self.hashes.shape != (len(self.keys), ITEM_HASH_BYTES) or self.hashes.dtype != np.uint8:
            raise ValueError("hashes must be (N, 16) uint8")
        for name in ("groups", "clusters"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (len(self.keys),):
                raise ValueError(f"{name} must be (N,)")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def pool_id(self) -> str:
        return compute_pool_id(self.keys, self.hashes)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"keys_utf8": np.frombuffer(self.keys.blob, dtype=np.uint8), "hashes": self.hashes}
        if self.groups is not None:
            arrays["groups"] = self.groups
        if self.clusters is not None:
            arrays["clusters"] = self.clusters
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path, name: str) -> PoolManifest:
        try:
            with np.load(path, allow_pickle=False) as z:
                groups = z["groups"] if "groups" in z.files else None
                clusters = z["clusters"] if "clusters" in z.files else None
                # format 1 stored a numpy str array; the blob is the compact form (same keys, same pool_id)
                keys = KeyTable(z["keys_utf8"].tobytes()) if "keys_utf8" in z.files else z["keys"]
                return cls(name=name, keys=keys, hashes=z["hashes"], groups=groups, clusters=clusters)
        except (OSError, KeyError, ValueError) as exc:
            raise PoolError(f"cannot read pool manifest {path}: {exc}") from exc


def compute_pool_id(keys: KeyTable | np.ndarray | Sequence[str], hashes: np.ndarray) -> str:
    """sha256 over the count, the newline-joined keys and the hash table: order-sensitive by design."""
    table = _as_keys(keys)
    h = hashlib.sha256(b"plada-pool-v1\0")
    h.update(struct.pack("<Q", len(table)))
    h.update(hashlib.sha256(table.blob).digest())
    h.update(hashlib.sha256(np.ascontiguousarray(hashes).tobytes()).digest())
    return h.hexdigest()
