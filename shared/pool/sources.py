"""What a client's own copy of a pool holds, listed without decoding a picture: an image folder, WebDataset
tar shards or Parquet shards (image bytes + a path/key column, as dataset hubs store them), and reading one
item's bytes back from wherever it lives.

Every entry has a local name (relative path, tar member, Parquet key) and a location: ``container`` (tar or
Parquet file, -1 for a plain file), ``a`` and ``b`` (tar: byte offset and size; Parquet: row group and row).
Local names come from the copy's own listing, never from the network, and an entry whose path would leave
SOURCE (a link out of the tree, an absolute or ``..`` tar member) is refused with one line and skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from plada.shared.errors import PoolError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
_PARQUET_KEYS = ("__key__", "key", "path", "file_name", "filename", "image_path", "name", "id")
_PARQUET_IMAGES = ("image", "img", "jpg", "jpeg", "png", "webp", "bytes", "image_bytes")


@dataclass
class Listing:
    kind: str  # folder | tar | parquet
    root: Path
    names: list[str]
    container: list[int]
    a: list[int]
    b: list[int]
    containers: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # one line each
    columns: dict[str, str] = field(default_factory=dict)  # parquet: {"image": ..., "key": ..., "struct": "1"/""}


def detect_kind(source: Path) -> str:
    if not source.is_dir():
        raise PoolError(f"pool copy {source} does not exist or is not a folder")
    with os.scandir(source) as it:
        names = [e.name for e in it if e.is_file()]
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(n.endswith(".tar") for n in names):
        return "tar"
    return "folder"


def list_source(source: Path, kind: str | None = None) -> Listing:
    """List a copy (``kind`` None: Parquet files at the top → parquet, tar files → tar, else an image folder)."""
    source = Path(source).expanduser().resolve()
    kind = kind or detect_kind(source)
    lister = {"folder": _list_folder, "tar": _list_tars, "parquet": _list_parquet}.get(kind)
    if lister is None:
        raise PoolError(f"unknown copy kind {kind!r} (folder, tar or parquet)")
    return lister(source)


def walk_images(source: Path, refused: list[str] | None = None) -> Iterator[str]:
    """Relative posix paths of image files under ``source``, streamed with os.scandir (no Path objects: a
    1.28M-file tree is listed in seconds). Hidden files and folders are skipped. With ``refused`` (a client's
    copy), links that leave ``source`` are not followed but reported there, one line each; without it (the
    server indexing its own pool) every link is followed."""
    real_root = os.path.realpath(source)
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(source, rel) if rel else source) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                r = f"{rel}/{e.name}" if rel else e.name
                if refused is not None and e.is_symlink():
                    target = os.path.realpath(e.path)
                    if os.path.commonpath([real_root, target]) != real_root:
                        refused.append(f"refusing {r}: a link out of the copy's folder (to {target})")
                        continue
                if e.is_dir(follow_symlinks=True):
                    stack.append(r)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                    yield r


def _list_folder(root: Path) -> Listing:
    out = Listing("folder", root, [], [], [], [])
    out.names = sorted(walk_images(root, out.refused))
    n = len(out.names)
    out.container, out.a, out.b = [-1] * n, [0] * n, [0] * n
    return out


def _unsafe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or "\\" in name or "\0" in name


def _list_tars(root: Path) -> Listing:
    """Tar headers only (tarfile seeks past each member's data): image members in shard-name then tar order."""
    import tarfile

    out = Listing("tar", root, [], [], [], [])
    shards = sorted(p for p in root.glob("*.tar") if p.is_file())
    for si, shard in enumerate(shards):
        out.containers.append(shard.name)
        try:
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    if _unsafe_member(m.name):
                        out.refused.append(f"refusing {shard.name}:{m.name[:120]}: a member path that leaves the shard")
                        continue
                    if os.path.splitext(m.name)[1].lower() in IMAGE_SUFFIXES:
                        out.names.append(m.name)
                        out.container.append(si)
                        out.a.append(m.offset_data)
                        out.b.append(m.size)
        except tarfile.TarError as exc:
            raise PoolError(f"cannot read shard {shard} (only uncompressed tars are read in place): {exc}") from exc
    return out


def parquet_columns(schema: Any) -> dict[str, str]:
    """Which columns hold the image bytes and the key: the hubs' ``image`` struct {bytes, path}, or a binary
    column and a string column by their usual names."""
    import pyarrow as pa

    names = schema.names
    for col in _PARQUET_IMAGES:
        if col in names:
            t = schema.field(col).type
            if pa.types.is_struct(t) and {"bytes", "path"} <= {f.name for f in t}:
                key = next((k for k in _PARQUET_KEYS if k in names), "")
                return {"image": col, "key": key or f"{col}.path", "struct": "1"}
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):
                key = next((k for k in _PARQUET_KEYS if k in names), "")
                if key:
                    return {"image": col, "key": key, "struct": ""}
    raise PoolError(
        f"cannot find the image and key columns in {names[:12]}: expected an 'image' struct with bytes and path "
        f"(the dataset hubs' layout) or a binary column ({', '.join(_PARQUET_IMAGES)}) beside a key column "
        f"({', '.join(_PARQUET_KEYS)})"
    )


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PoolError("reading Parquet copies needs pyarrow: pip install 'plada[parquet]' (or pyarrow)") from exc
    return pq


def _list_parquet(root: Path) -> Listing:
    """Only the key column is read (the image bytes stay on disk until an item is used)."""
    pq = _pyarrow()
    out = Listing("parquet", root, [], [], [], [])
    files = sorted(p for p in root.glob("*.parquet") if p.is_file())
    for fi, path in enumerate(files):
        out.containers.append(path.name)
        try:
            pf = pq.ParquetFile(path)
            cols = parquet_columns(pf.schema_arrow)
            if out.columns and cols != out.columns:
                raise PoolError(f"{path.name} stores its images in other columns than {files[0].name}")
            out.columns = cols
            for rg in range(pf.num_row_groups):
                table = pf.read_row_group(rg, columns=[cols["key"]])
                col = table.column(0)
                if col.type.num_fields:  # a nested selection ("image.path") comes back as a struct
                    col = col.combine_chunks().field(cols["key"].rsplit(".", 1)[-1])
                keys = col.to_pylist()
                for row, k in enumerate(keys):
                    if not k:
                        continue
                    k = str(k)
                    if _unsafe_member(k):
                        out.refused.append(f"refusing {path.name} row {row}: key {k[:120]!r} leaves the copy")
                        continue
                    out.names.append(k)
                    out.container.append(fi)
                    out.a.append(rg)
                    out.b.append(row)
        except (OSError, ValueError) as exc:
            raise PoolError(f"cannot read Parquet shard {path}: {exc}") from exc
    return out


class SourceReader:
    """Reads an entry's bytes by location; opened lazily per process (DataLoader workers get their own)."""

    def __init__(self, kind: str, root: Path, containers: list[str], columns: dict[str, str]) -> None:
        self.kind, self.root, self.containers, self.columns = kind, Path(root), containers, columns
        self._real_root = os.path.realpath(self.root)
        self._rg: dict[tuple[int, int], list[Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_rg"} | {"_rg": {}}

    def read(self, name: str, container: int, a: int, b: int) -> bytes:
        if self.kind == "folder":
            path = os.path.join(self.root, name)
            real = os.path.realpath(path)  # the tree may have changed since attach: never leave it
            if os.path.commonpath([self._real_root, real]) != self._real_root:
                raise OSError(f"{name} now links out of the copy's folder")
            with open(real, "rb") as f:
                return f.read()
        if self.kind == "tar":
            with open(self.root / self.containers[container], "rb") as f:
                return os.pread(f.fileno(), b, a)
        return bytes(self._parquet(container, a)[b])

    def _parquet(self, container: int, rg: int) -> list[Any]:
        key = (container, rg)
        if key not in self._rg:
            pq = _pyarrow()
            col = self.columns["image"]
            table = pq.ParquetFile(self.root / self.containers[container]).read_row_group(rg, columns=[col])
            arr = table.column(0)
            if self.columns.get("struct"):
                arr = arr.combine_chunks().field("bytes")
            if len(self._rg) >= 2:  # a payload's items come sorted by position; keep little in memory
                self._rg.pop(next(iter(self._rg)))
            self._rg[key] = [v if v is not None else b"" for v in arr.to_pylist()]
        return self._rg[key]


def as_arrays(listing: Listing, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The location columns of the kept entries, as stored in an attachment."""
    return {
        "container": np.asarray(listing.container, dtype=np.int32)[keep],
        "a": np.asarray(listing.a, dtype=np.int64)[keep],
        "b": np.asarray(listing.b, dtype=np.int64)[keep],
    }
