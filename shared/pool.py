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

import functools
import hashlib
import json
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from plada.shared.errors import PoolError

POOL_FORMAT = "plada-pool"
POOL_FORMAT_VERSION = 1
ITEM_HASH_BYTES = 16
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
Progress = Callable[[int, int], None]
FALLBACK_IMAGE_SIZE = 224  # working size when no sampled image header can be read (hashing needs none)


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


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file. The temp
    name is unique per writer (process and call), so threads and processes writing one path never collide:
    the last rename wins, and every rename installs a complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_progress(listing_id: str, root: str, done: int, hashes: np.ndarray, f: Any) -> None:
    """A resumable hashing checkpoint: the listing it belongs to and the first ``done`` hashes."""
    np.savez(f, listing=listing_id, source=root, done=done, hashes=hashes[:done])


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
        return bytes(self.images[i].tobytes())

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

    decode_bound = True  # readers should decode in parallel (shared.nn.pool_batches)

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


class TarPool(Pool):
    """WebDataset-style tar shards read in place: each item is one image member, found by its byte offset, so a
    random batch costs one ``pread`` per image. Shards must be uncompressed tars (random access)."""

    decode_bound = True

    def __init__(self, root: Path, info: dict[str, Any], manifest: PoolManifest) -> None:
        super().__init__(root, info, manifest)
        try:
            with np.load(root / "tar_index.npz", allow_pickle=False) as z:
                self.shard_of, self.offset, self.size = z["shard"], z["offset"], z["size"]
        except (OSError, KeyError, ValueError) as exc:
            raise PoolError(f"cannot read the shard index of {root}: {exc}") from exc
        if not len(self.shard_of) == len(self.offset) == len(self.size) == len(manifest):
            raise PoolError(f"shard index of {root} does not match its manifest")
        self._shards = [Path(info["source"]) / name for name in info["shards"]]

    def item_bytes(self, i: int) -> bytes:
        with open(self._shards[int(self.shard_of[i])], "rb") as f:
            return os.pread(f.fileno(), int(self.size[i]), int(self.offset[i]))

    def batch(self, indices: np.ndarray) -> np.ndarray:
        import io

        from PIL import Image

        h, w, c = self.image_shape
        mode = "L" if c == 1 else "RGB"
        out = np.empty((len(indices), h, w, c), dtype=np.uint8)
        for j, i in enumerate(np.asarray(indices, dtype=np.int64)):
            with Image.open(io.BytesIO(self.item_bytes(int(i)))) as im:
                arr = np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
            out[j] = arr.reshape(h, w, c)
        return out


def _sample_key(member: str) -> tuple[str, str]:
    """WebDataset's rule: a sample is everything up to the first dot of the file name (``a/b.c.jpg`` → ``a/b``)."""
    folder, _, fname = member.rpartition("/")
    base, _, ext = fname.partition(".")
    return (f"{folder}/{base}" if folder else base), ext


def index_tar_shards(
    source: Path,
    out: Path,
    name: str,
    *,
    image_size: int | None = None,
    channels: int = 3,
    progress: Progress | None = None,
) -> Pool:
    """Build a ``tar`` pool over the ``*.tar`` shards in ``source`` (WebDataset layout: ``<key>.jpg`` beside
    ``<key>.cls``). Keys are ``<shard>/<member>`` in shard-name then tar order; the group is the sample's
    ``.cls`` label when there is one (ImageNet shards carry it), else the shard. ``image_size`` None keeps
    the images' native size (median shorter side of a sample)."""
    import tarfile

    source = source.resolve()
    shards = sorted(p for p in source.glob("*.tar") if p.is_file()) if source.is_dir() else []
    if not shards:
        raise PoolError(f"no .tar shards in {source} (compressed shards cannot be read in place: untar.gz them)")
    keys: list[str] = []
    hashes: list[bytes] = []
    shard_of: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    for si, shard in enumerate(shards):
        cls: dict[str, int] = {}
        first = len(keys)
        try:
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    stem, ext = _sample_key(m.name)
                    if ext.lower() == "cls":
                        f = tf.extractfile(m)
                        text = f.read(32).decode("ascii", "replace").strip() if f else ""
                        cls[stem] = int(text) if text.isdigit() else -1
                    elif "." + ext.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES:
                        f = tf.extractfile(m)
                        assert f is not None
                        hashes.append(item_hash(f.read()))
                        keys.append(f"{shard.name}/{m.name}")
                        shard_of.append(si)
                        offsets.append(m.offset_data)
                        sizes.append(m.size)
                        labels.append(-1)  # the sample's .cls may come after its image: resolved below
        except tarfile.TarError as exc:
            raise PoolError(f"cannot read shard {shard}: {exc}") from exc
        for j in range(first, len(keys)):
            label = cls.get(_sample_key(keys[j].split("/", 1)[1])[0], -1)
            labels[j] = label if label >= 0 else -1 - si
        if progress:
            progress(si + 1, len(shards))
    if not keys:
        raise PoolError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the shards under {source}")
    if image_size is None:
        image_size = _native_tar_size(shards, shard_of, offsets, sizes)
    # groups: the .cls labels as they are; shards without labels get ids after the largest label
    lab = np.asarray(labels, dtype=np.int64)
    top = int(lab.max()) + 1 if (lab >= 0).any() else 0
    groups = np.where(lab >= 0, lab, top + (-1 - lab)).astype(np.int32)
    manifest = PoolManifest(
        name=name,
        keys=KeyTable.from_strings(keys),
        hashes=np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, ITEM_HASH_BYTES),
        groups=groups,
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(
        out / "tar_index.npz",
        lambda f: np.savez(
            f,
            shard=np.asarray(shard_of, dtype=np.uint32),
            offset=np.asarray(offsets, dtype=np.int64),
            size=np.asarray(sizes, dtype=np.int64),
        ),
    )
    return _finish(
        out,
        manifest,
        {
            "kind": "tar",
            "source": str(source),
            "shards": [p.name for p in shards],
            "image_shape": [image_size, image_size, channels],
        },
    )


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
    manifest = PoolManifest(
        name=name, keys=KeyTable.from_strings(keys), hashes=hashes.reshape(-1, ITEM_HASH_BYTES), groups=groups
    )
    shape = list(images.shape[1:]) + ([1] if images.ndim == 3 else [])
    return _finish(out, manifest, {"kind": "array", "image_shape": shape})


def _walk_images(source: Path) -> Iterable[str]:
    """Relative posix paths of image files under ``source``, streamed with os.scandir (no Path objects: a
    1.28M-file tree is listed in seconds). Hidden files and folders are skipped."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(source / rel if rel else source) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=True):
                    stack.append(r)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                    yield r


def _hash_file(path: str) -> bytes:
    """Raw os.open/os.read: a third faster than ``open()`` on the small files that dominate listing-bound trees."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while chunk := os.read(fd, 1 << 22):
            parts.append(chunk)
    finally:
        os.close(fd)
    return item_hash(b"".join(parts))


def _hash_files(paths: list[str]) -> bytes:
    """One task per chunk of files: per-file tasks cost more in thread hand-offs than small files take to hash."""
    return b"".join(_hash_file(p) for p in paths)


def index_image_folder(
    source: Path,
    out: Path,
    name: str,
    *,
    image_size: int | None = None,
    channels: int = 3,
    workers: int | None = None,
    progress: Progress | None = None,
    checkpoint_every: int = 65_536,
) -> Pool:
    """Build a ``folder`` pool manifest over an image tree: keys are sorted relative paths, group = top folder.

    Files are hashed by a thread pool (reads and BLAKE2b release the GIL). Every ``checkpoint_every`` items the
    hashes so far go to ``out/.index-partial.npz``; a rerun over the same file list resumes from there, so an
    interrupted index of ImageNet does not start over. ``image_size`` None keeps the images' native size (the
    median side of a sample of files): a 64 px pool is never silently upsampled to 224."""
    from concurrent.futures import ThreadPoolExecutor

    source = source.resolve()
    if not source.is_dir():
        raise PoolError(f"image folder {source} does not exist")
    listed = sorted(_walk_images(source))
    if not listed:
        raise PoolError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
    if any("\n" in k for k in listed):
        raise PoolError("image paths with newlines are not supported")
    keys = KeyTable.from_strings(listed)
    if image_size is None:
        image_size = native_image_size(source, listed)
    n = len(keys)
    tops = np.asarray([k.split("/", 1)[0] if "/" in k else "" for k in listed])
    del listed
    group_names, groups = np.unique(tops, return_inverse=True)
    hashes = np.empty((n, ITEM_HASH_BYTES), dtype=np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / ".index-partial.npz"
    listing_id = hashlib.sha256(keys.blob).hexdigest()
    done = 0
    if partial.is_file():
        try:
            with np.load(partial, allow_pickle=False) as z:
                if str(z["listing"]) == listing_id and str(z["source"]) == str(source):
                    done = int(z["done"])
                    hashes[:done] = z["hashes"][:done]
        except (OSError, KeyError, ValueError):
            done = 0  # a damaged checkpoint only costs the work it saved
    root = str(source)
    # file reads and BLAKE2b of big files release the GIL; more threads than cores only thrash on small files
    with ThreadPoolExecutor(max_workers=workers or max(2, min(32, os.cpu_count() or 1))) as ex:
        while done < n:
            stop = min(n, done + checkpoint_every)
            paths = [f"{root}/{keys[i]}" for i in range(done, stop)]
            chunks = [paths[i : i + 512] for i in range(0, len(paths), 512)]
            flat = np.frombuffer(b"".join(ex.map(_hash_files, chunks)), dtype=np.uint8)
            hashes[done:stop] = flat.reshape(-1, ITEM_HASH_BYTES)
            done = stop
            if done < n:
                atomic_write(partial, functools.partial(_save_progress, listing_id, root, done, hashes))
            if progress:
                progress(done, n)
    manifest = PoolManifest(name=name, keys=keys, hashes=hashes, groups=groups.astype(np.int32))
    pool = _finish(
        out,
        manifest,
        {
            "kind": "folder",
            "source": str(source),
            "image_shape": [image_size, image_size, channels],
            "group_names": [str(g) for g in group_names],
        },
    )
    partial.unlink(missing_ok=True)
    return pool


def _median_side(n: int, open_item: Callable[[int], Any], sample: int = 64) -> int:
    """The median shorter side of up to ``sample`` images spread over ``n`` items (headers only, no decoding);
    ``open_item(i)`` gives a path or file object. Unreadable items are skipped."""
    from PIL import Image

    sides = []
    for i in np.linspace(0, n - 1, min(sample, n)).astype(int):
        try:
            with Image.open(open_item(int(i))) as im:
                sides.append(min(im.size))
        except OSError:
            continue
    return int(np.median(sides)) if sides else FALLBACK_IMAGE_SIZE


def _native_tar_size(shards: list[Path], shard_of: list[int], offsets: list[int], sizes: list[int]) -> int:
    import io

    def member(i: int) -> io.BytesIO:
        with open(shards[shard_of[i]], "rb") as f:
            return io.BytesIO(os.pread(f.fileno(), sizes[i], offsets[i]))

    return _median_side(len(offsets), member)


def native_image_size(source: Path, keys: Sequence[str], sample: int = 64) -> int:
    """The median shorter side of up to ``sample`` images spread over ``keys`` (headers only, no decoding)."""
    return _median_side(len(keys), lambda i: source / keys[i], sample)


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
    kinds: dict[str, type[Pool]] = {"array": ArrayPool, "folder": FolderPool, "tar": TarPool}
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
