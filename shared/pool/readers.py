"""Reading a pool: ``open_pool`` on its folder gives the right reader (array, image folder, tar shards), and
``verify_pool`` recomputes every item's hash from the local copy before a client trusts a payload's indices."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.errors import PoolError
from plada.shared.pool.layout import PoolLayout
from plada.shared.pool.manifest import (
    POOL_FORMAT,
    POOL_FORMAT_VERSION,
    PoolManifest,
    item_hash,
)

Progress = Callable[[int, int], None]


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

    def feature_keys(self, indices: np.ndarray) -> np.ndarray:
        """What cached features of these items are keyed by: their manifest hashes (an attached copy keys by
        its own bytes instead, so a re-encoded item never reuses another copy's features)."""
        return self.manifest.hashes[np.asarray(indices, dtype=np.int64)]

    def iter_item_hashes(self, progress: Progress | None = None) -> Iterable[bytes]:
        n = len(self)
        for i in range(n):
            yield item_hash(self.item_bytes(i))
            if progress and (i + 1) % 4096 == 0:
                progress(i + 1, n)
        if progress:
            progress(n, n)


def decode_image(source: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file (a path or a file object) as uint8 (H, W, C) in the pool's working shape: converted to
    grey or RGB and resized bilinearly (PIL returns a copy when the size already matches). Every file-backed
    reader decodes through here, so a folder, a tar shard and an attached copy give the same pixels."""
    from PIL import Image

    h, w, c = shape
    with Image.open(source) as im:
        arr = np.asarray(im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR))
    return arr.reshape(h, w, c)


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
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(np.asarray(indices, dtype=np.int64)):
            out[j] = decode_image(self._path(int(i)), self.image_shape)
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

        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(np.asarray(indices, dtype=np.int64)):
            out[j] = decode_image(io.BytesIO(self.item_bytes(int(i))), self.image_shape)
        return out


def open_pool(root: Path | str) -> Pool:
    """Open a pool folder written by plada; checks the manifest against ``pool.json`` (cheap, no pixel reads)."""
    root = Path(root).expanduser()
    info_path = root / "pool.json"
    if not info_path.is_file():
        if not root.exists():
            raise PoolError(f"pool folder {root} does not exist")
        inner = sorted(p.name for p in root.iterdir() if (p / "pool.json").is_file()) if root.is_dir() else []
        if inner:
            raise PoolError(f"{root} is a folder of pools, not a pool: use {root / inner[0]}")
        raise PoolError(
            f"{root} is not a plada pool (no pool.json); build one with 'plada-server pool build mini-v1 --out DIR' "
            "or attach your own copy with 'plada-client pool attach'"
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
    from plada.shared.pool.attach import AttachedPool  # a client's own copy, attached to a definition

    kinds: dict[str, type[Pool]] = {"array": ArrayPool, "folder": FolderPool, "tar": TarPool, "attached": AttachedPool}
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
