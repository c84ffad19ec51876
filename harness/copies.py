"""Client copies of an image-folder pool, made the ways real copies differ from the server's: files missing,
re-encoded, downsampled, flattened, repacked as WebDataset tars or Parquet, or other pictures under the right
names. Used by the own-copy tests and ``bench/own_copy.py``; never shipped."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def files_of(src: Path) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(src):
        for f in files:
            if not f.startswith("."):
                out.append(os.path.relpath(os.path.join(root, f), src).replace(os.sep, "/"))
    return sorted(out)


def _each(src: Path, out: Path, write: Callable[[bytes, Path], None], rename: Callable[[str], str]) -> None:
    for rel in files_of(src):
        dst = out / rename(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write((src / rel).read_bytes(), dst)


def identical(src: Path, out: Path) -> list[str]:
    shutil.copytree(src, out)
    return []


def delete_fraction(src: Path, out: Path, fraction: float, seed: int = 0) -> list[str]:
    """A copy with ``fraction`` of the files removed at random; returns the removed relative paths."""
    shutil.copytree(src, out)
    rels = files_of(out)
    rng = np.random.default_rng(seed)
    gone = sorted(rels[i] for i in rng.choice(len(rels), max(1, round(fraction * len(rels))), replace=False))
    for rel in gone:
        (out / rel).unlink()
    return gone


def _reencode(quality: int) -> Callable[[bytes, Path], None]:
    def write(data: bytes, dst: Path) -> None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB" if im.mode not in ("L",) else "L").save(dst, "JPEG", quality=quality)

    return write


def reencode_jpeg(src: Path, out: Path, quality: int = 75) -> list[str]:
    """Every file re-encoded as JPEG at ``quality``, same names."""
    _each(src, out, _reencode(quality), lambda r: r)
    return []


def downsample_png(src: Path, out: Path, side: int = 32) -> list[str]:
    """Every picture downsampled to ``side`` px (longer side) and stored as PNG (names keep their stem)."""

    def write(data: bytes, dst: Path) -> None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
            im.save(dst, "PNG")

    _each(src, out, write, lambda r: os.path.splitext(r)[0] + ".png")
    return []


def flat(src: Path, out: Path) -> list[str]:
    """``<group>/<name>`` becomes ``<group>_<name>`` in one folder."""
    _each(src, out, lambda data, dst: dst.write_bytes(data), lambda r: r.replace("/", "_"))
    return []


def webdataset(src: Path, out: Path, per_shard: int = 5000) -> list[str]:
    """WebDataset shards: ``<group>/<stem>.jpg`` + ``<group>/<stem>.cls`` members, ``per_shard`` samples each."""
    out.mkdir(parents=True, exist_ok=True)
    rels = files_of(src)
    groups = sorted({r.split("/", 1)[0] for r in rels})
    for s in range(0, len(rels), per_shard):
        with tarfile.open(out / f"shard-{s // per_shard:05d}.tar", "w") as tf:
            for rel in rels[s : s + per_shard]:
                stem = os.path.splitext(rel)[0]
                for name, data in (
                    (f"{stem}.jpg", (src / rel).read_bytes()),
                    (f"{stem}.cls", str(groups.index(rel.split("/", 1)[0])).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return []


def parquet(src: Path, out: Path, per_file: int = 10_000, row_group: int = 1000) -> list[str]:
    """The dataset hubs' layout: an ``image`` struct {bytes, path} (path = the file name only) and a label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rels = files_of(src)
    groups = sorted({r.split("/", 1)[0] for r in rels})
    for s in range(0, len(rels), per_file):
        part = rels[s : s + per_file]
        table = pa.table(
            {
                "image": [{"bytes": (src / r).read_bytes(), "path": r.rsplit("/", 1)[-1]} for r in part],
                "label": [groups.index(r.split("/", 1)[0]) for r in part],
            }
        )
        pq.write_table(table, out / f"train-{s // per_file:05d}.parquet", row_group_size=row_group)
    return []


def replace_fraction(src: Path, out: Path, fraction: float, seed: int = 0) -> list[str]:
    """A copy where ``fraction`` of the files hold another pool picture (a wrong picture under the right key);
    returns the replaced relative paths."""
    shutil.copytree(src, out)
    rels = files_of(out)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rels), max(1, round(fraction * len(rels))), replace=False)
    donors = rng.permutation(len(rels))
    replaced = []
    for k, i in enumerate(chosen):
        d = int(donors[k])
        if d == i:
            d = (d + 1) % len(rels)
        (out / rels[i]).write_bytes((src / rels[d]).read_bytes())
        replaced.append(rels[i])
    return sorted(replaced)
