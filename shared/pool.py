"""Reference pools: the ordered item list server and clients must agree on, and readers for it.

Indices in a payload mean nothing unless both sides hold the same items in the same order. A pool is therefore
pinned by its **manifest** (ordered keys + a 128-bit BLAKE2b hash per item) and a ``pool_id``, the sha256 of the
manifest. A client recomputes the per-item hashes from its own copy (``plada-client verify-pool``) before it
trusts a payload's indices.

On disk a pool is a folder with ``pool.json`` (kind, name, pool_id), ``manifest.npz`` and, for the ``array``
kind, ``images.npy`` (N, H, W[, C] uint8). The ``folder`` kind points at an ImageNet-style tree
(``train/<wnid>/*.JPEG``) whose files are read on demand; keys are the sorted relative paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.errors import PoolError

POOL_FORMAT = "plada-pool"
POOL_FORMAT_VERSION = 1
ITEM_HASH_BYTES = 16
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
Progress = Callable[[int, int], None]


def item_hash(data: bytes) -> bytes:
    """128-bit BLAKE2b of an item's canonical bytes (pixel bytes for arrays, file bytes for folders)."""
    return hashlib.blake2b(data, digest_size=ITEM_HASH_BYTES).digest()


@dataclass(frozen=True)
class PoolManifest:
    """Ordered keys, per-item hashes and optional group ids; ``pool_id`` is derived, never chosen."""

    name: str
    keys: np.ndarray  # (N,) str
    hashes: np.ndarray  # (N, 16) uint8
    groups: np.ndarray | None = None  # (N,) int32, e.g. the synset folder
    clusters: np.ndarray | None = None  # (N,) int32, a coding order computed once per pool (e.g. k-means)

    def __post_init__(self) -> None:
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
        arrays: dict[str, Any] = {"keys": self.keys.astype(str), "hashes": self.hashes}
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
                return cls(name=name, keys=z["keys"], hashes=z["hashes"], groups=groups, clusters=clusters)
        except (OSError, KeyError, ValueError) as exc:
            raise PoolError(f"cannot read pool manifest {path}: {exc}") from exc


def compute_pool_id(keys: np.ndarray, hashes: np.ndarray) -> str:
    """sha256 over the count, the newline-joined keys and the hash table: order-sensitive by design."""
    h = hashlib.sha256(b"plada-pool-v1\0")
    h.update(struct.pack("<Q", len(keys)))
    h.update(hashlib.sha256("\n".join(map(str, keys)).encode("utf-8")).digest())
    h.update(hashlib.sha256(np.ascontiguousarray(hashes).tobytes()).digest())
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


@dataclass(frozen=True)
class PoolLayout:
    """A coding order for payloads: items sorted by their manifest group, and the group boundaries.

    Server and client derive it from the same manifest, so it never travels; its ``layout_id`` goes into a
    payload's header and the decoder refuses a payload whose layout is not its pool's.
    """

    order: np.ndarray  # coding position -> pool index
    bounds: np.ndarray  # block boundaries in coding positions: 0 = b_0 < b_1 < … < b_m = N
    layout_id: str

    @classmethod
    def from_groups(cls, groups: np.ndarray) -> PoolLayout:
        order = np.argsort(groups, kind="stable").astype(np.int64)
        g = groups[order]
        bounds = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1, len(g)].astype(np.int64)
        h = hashlib.sha256(b"plada-layout-v1\0")
        h.update(order.astype("<u4").tobytes())
        h.update(bounds.astype("<u8").tobytes())
        return cls(order=order, bounds=bounds, layout_id=h.hexdigest()[:32])


class Pool:
    """A pool on disk. ``batch(indices)`` returns uint8 images (n, H, W, C) in the pool's working shape."""

    def __init__(self, root: Path, info: dict[str, Any], manifest: PoolManifest) -> None:
        self.root = root
        self.info = info
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def pool_id(self) -> str:
        return str(self.info["pool_id"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.info["image_shape"]
        return int(h), int(w), int(c)

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def layout_groups(self) -> np.ndarray | None:
        """What the coding layout sorts by: the manifest's clusters if computed, else its groups."""
        m = self.manifest
        return m.clusters if m.clusters is not None else m.groups

    @property
    def layout(self) -> PoolLayout | None:
        """The coding layout (items sorted by ``layout_groups``), or None when the manifest has neither."""
        g = self.layout_groups
        if g is None:
            return None
        if getattr(self, "_layout", None) is None:
            self._layout: PoolLayout | None = PoolLayout.from_groups(g)
        return self._layout

    def set_clusters(self, clusters: np.ndarray) -> PoolLayout:
        """Store a coding order (one cluster id per item) in the manifest; pool_id is unchanged."""
        clusters = np.asarray(clusters, dtype=np.int32)
        if clusters.shape != (len(self),):
            raise PoolError(f"need one cluster id per item ({len(self)}), got shape {clusters.shape}")
        m = self.manifest
        self.manifest = PoolManifest(name=m.name, keys=m.keys, hashes=m.hashes, groups=m.groups, clusters=clusters)
        self.manifest.save(self.root / "manifest.npz")
        self._layout = None
        layout = self.layout
        assert layout is not None
        return layout

    def batch(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def item_bytes(self, i: int) -> bytes:
        raise NotImplementedError

    def iter_item_hashes(self, progress: Progress | None = None) -> Iterable[bytes]:
        n = len(self)
        for i in range(n):
            yield item_hash(self.item_bytes(i))
            if progress and (i + 1) % 4096 == 0:
                progress(i + 1, n)
        if progress:
            progress(n, n)


class ArrayPool(Pool):
    """Small pools stored as one memory-mapped uint8 array (the mini world)."""

    def __init__(self, root: Path, info: dict[str, Any], manifest: PoolManifest) -> None:
        super().__init__(root, info, manifest)
        try:
            arr = np.load(root / "images.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PoolError(f"cannot read pool images {root / 'images.npy'}: {exc}") from exc
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or len(arr) != len(manifest):
            raise PoolError(
                f"pool images in {root} have shape {arr.shape} {arr.dtype}; expected ({len(manifest)}, H, W[, C]) uint8"
            )
        self.images = arr if arr.ndim == 4 else arr[..., None]

    def batch(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.images[np.asarray(indices, dtype=np.int64)])

    def item_bytes(self, i: int) -> bytes:
        return self.images[i].tobytes()

    def iter_item_hashes(self, progress: Progress | None = None) -> Iterable[bytes]:
        n = len(self)
        step = 8192
        for start in range(0, n, step):
            chunk = np.ascontiguousarray(self.images[start : start + step])
            for row in chunk:
                yield item_hash(row.tobytes())
            if progress:
                progress(min(start + step, n), n)


class FolderPool(Pool):
    """An ImageNet-style image tree read on demand; images are resized to ``image_shape``."""

    def batch(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w, c = self.image_shape
        mode = "L" if c == 1 else "RGB"
        out = np.empty((len(indices), h, w, c), dtype=np.uint8)
        for j, i in enumerate(np.asarray(indices, dtype=np.int64)):
            with Image.open(self._path(int(i))) as im:
                arr = np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
            out[j] = arr.reshape(h, w, c)
        return out

    def _path(self, i: int) -> Path:
        return Path(self.info["source"]) / str(self.manifest.keys[i])

    def item_bytes(self, i: int) -> bytes:
        return self._path(i).read_bytes()


def write_array_pool(
    out: Path, name: str, images: np.ndarray, keys: list[str], groups: np.ndarray | None = None
) -> Pool:
    """Write an ``array`` pool folder; images (N, H, W[, C]) uint8 are hashed row by row."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError("images must be uint8 (N, H, W[, C])")
    if len(keys) != len(images) or len(set(keys)) != len(keys) or any("\n" in k for k in keys):
        raise ValueError("keys must be unique, newline-free, one per image")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "images.npy", lambda f: np.save(f, images))
    flat = images.reshape(len(images), -1)
    hashes = np.frombuffer(b"".join(item_hash(r.tobytes()) for r in flat), dtype=np.uint8)
    manifest = PoolManifest(name=name, keys=np.asarray(keys), hashes=hashes.reshape(-1, ITEM_HASH_BYTES), groups=groups)
    shape = list(images.shape[1:]) + ([1] if images.ndim == 3 else [])
    return _finish(out, manifest, {"kind": "array", "image_shape": shape})


def index_image_folder(
    source: Path, out: Path, name: str, *, image_size: int = 224, channels: int = 3, progress: Progress | None = None
) -> Pool:
    """Build a ``folder`` pool manifest over an image tree: keys are sorted relative paths, group = top folder."""
    source = source.resolve()
    if not source.is_dir():
        raise PoolError(f"image folder {source} does not exist")
    keys = sorted(
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not keys:
        raise PoolError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
    if any("\n" in k for k in keys):
        raise PoolError("image paths with newlines are not supported")
    tops = [k.split("/", 1)[0] if "/" in k else "" for k in keys]
    group_names = sorted(set(tops))
    gidx = {g: i for i, g in enumerate(group_names)}
    hashes = np.empty((len(keys), ITEM_HASH_BYTES), dtype=np.uint8)
    for i, k in enumerate(keys):
        hashes[i] = np.frombuffer(item_hash((source / k).read_bytes()), dtype=np.uint8)
        if progress and ((i + 1) % 1024 == 0 or i + 1 == len(keys)):
            progress(i + 1, len(keys))
    manifest = PoolManifest(
        name=name, keys=np.asarray(keys), hashes=hashes, groups=np.asarray([gidx[t] for t in tops], dtype=np.int32)
    )
    return _finish(
        out,
        manifest,
        {
            "kind": "folder",
            "source": str(source),
            "image_shape": [image_size, image_size, channels],
            "group_names": group_names,
        },
    )


def _finish(out: Path, manifest: PoolManifest, extra: dict[str, Any]) -> Pool:
    manifest.save(out / "manifest.npz")
    info = {
        "format": POOL_FORMAT,
        "format_version": POOL_FORMAT_VERSION,
        "name": manifest.name,
        "pool_id": manifest.pool_id,
        "n_items": len(manifest),
    } | extra
    atomic_write_bytes(out / "pool.json", json.dumps(info, indent=2).encode())
    return open_pool(out)


def open_pool(root: Path | str) -> Pool:
    """Open a pool folder written by plada; checks the manifest against ``pool.json`` (cheap, no pixel reads)."""
    root = Path(root).expanduser()
    info_path = root / "pool.json"
    if not info_path.is_file():
        raise PoolError(
            f"{root} is not a plada pool (no pool.json); build one with 'plada-server pool build mini-v1 --out DIR'"
        )
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolError(f"cannot read {info_path}: {exc}") from exc
    if info.get("format") != POOL_FORMAT or info.get("format_version") != POOL_FORMAT_VERSION:
        raise PoolError(f"{info_path} is not a supported pool description")
    manifest = PoolManifest.load(root / "manifest.npz", name=str(info.get("name", "")))
    if len(manifest) != info.get("n_items") or manifest.pool_id != info.get("pool_id"):
        raise PoolError(f"manifest of {root} does not match its pool.json (edited or truncated?)")
    kinds: dict[str, type[Pool]] = {"array": ArrayPool, "folder": FolderPool}
    kind = info.get("kind")
    if kind not in kinds:
        raise PoolError(f"unknown pool kind {kind!r} in {info_path}")
    return kinds[kind](root, info, manifest)


@dataclass(frozen=True)
class VerifyReport:
    pool_id: str
    n_items: int
    n_mismatched: int
    first_mismatches: list[str]

    @property
    def ok(self) -> bool:
        return self.n_mismatched == 0


def verify_pool(pool: Pool, progress: Progress | None = None) -> VerifyReport:
    """Recompute every item hash from the local copy and compare with the manifest."""
    bad: list[int] = []
    for i, h in enumerate(pool.iter_item_hashes(progress)):
        if h != pool.manifest.hashes[i].tobytes():
            bad.append(i)
    return VerifyReport(
        pool_id=pool.pool_id,
        n_items=len(pool),
        n_mismatched=len(bad),
        first_mismatches=[str(pool.manifest.keys[i]) for i in bad[:10]],
    )
