"""Making a pool: an array of images, an ImageNet-style image folder, or tar shards become a pool folder with
``pool.json`` and ``manifest.npz`` (hashing is resumable and parallel; large trees are read once)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.errors import PoolError
from plada.shared.files import atomic_write, atomic_write_bytes
from plada.shared.pool.manifest import (
    ITEM_HASH_BYTES,
    POOL_FORMAT,
    POOL_FORMAT_VERSION,
    KeyTable,
    PoolManifest,
    item_hash,
)
from plada.shared.pool.readers import Pool, Progress, open_pool
from plada.shared.pool.sources import IMAGE_SUFFIXES, walk_images

FALLBACK_IMAGE_SIZE = 224  # working size when no sampled image header can be read (hashing needs none)


def _save_progress(listing_id: str, root: str, done: int, hashes: np.ndarray, f: Any) -> None:
    """A resumable hashing checkpoint: the listing it belongs to and the first ``done`` hashes."""
    np.savez(f, listing=listing_id, source=root, done=done, hashes=hashes[:done])


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
    listed = sorted(walk_images(source))
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


def fingerprint_pool(pool: Pool, *, workers: int | None = None, progress: Progress | None = None) -> np.ndarray:
    """Every item's perceptual fingerprint (``fingerprints.npy`` in the pool folder, part of its published
    definition). Arrays are fingerprinted from their pixels; files from their bytes, decoded in threads (PIL
    releases the GIL) at a reduced JPEG scale, so ImageNet-1K costs minutes of CPU, not hours."""
    from concurrent.futures import ThreadPoolExecutor

    from plada.shared.pool.definition import FINGERPRINTS_FILE
    from plada.shared.pool.fingerprint import FINGERPRINT_BYTES, file_fingerprint, fingerprints

    n = len(pool)
    out = np.zeros((n, FINGERPRINT_BYTES), dtype=np.uint8)
    images = getattr(pool, "images", None)
    step = 4096
    if images is not None:
        for s in range(0, n, step):
            out[s : s + step] = fingerprints(np.asarray(images[s : s + step]))
            if progress:
                progress(min(s + step, n), n)
    else:

        def one(i: int) -> bytes:
            try:
                return file_fingerprint(pool.item_bytes(i))
            except OSError:
                return bytes(FINGERPRINT_BYTES)  # an undecodable item: no copy will match it either

        with ThreadPoolExecutor(max_workers=workers or max(2, min(16, os.cpu_count() or 1))) as ex:
            for s in range(0, n, step):
                rows = b"".join(ex.map(one, range(s, min(s + step, n))))
                out[s : s + step] = np.frombuffer(rows, dtype=np.uint8).reshape(-1, FINGERPRINT_BYTES)
                if progress:
                    progress(min(s + step, n), n)
    atomic_write(pool.root / FINGERPRINTS_FILE, lambda f: np.save(f, out))
    return out
