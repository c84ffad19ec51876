"""The photo world: a real-photo development world built from a folder of zips (``shared/photo-world``).

Not a dependency of ``make demo`` or ``make test``: a fresh machine does not have the folder. Benchmarks
(``bench/photo.py``) and opt-in tests build it with ``plada-server pool build photo-v1 --from DIR``.

Pool ``photo-v1``: ``pool_photo40k.zip`` (40,000 JPEGs, 64×64 RGB, ``<wnid>/<file>.JPEG``) extracted under
``OUT/sources/photo-v1`` and indexed as a folder pool at its native 64 px (the folder = the group).
Tasks: every ``target_<name>.zip`` (``pub/<class>/<img>``, ``test/<class>/<img>``, ``classes.txt``) becomes
``OUT/tasks/<name>/{train,test}.npz`` (uint8 images at their own 96 px, labels, class names) and
``task.json``; ``pub`` goes to the publisher, ``test`` stays with the client.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from plada.shared.errors import PoolSourceMissingError
from plada.shared.files import atomic_write, atomic_write_bytes
from plada.shared.pool import Pool, index_image_folder, open_pool

POOL_NAME = "photo-v1"
BUILDER_VERSION = 1
POOL_ZIP = "pool_photo40k.zip"
Log = Callable[[str], None]


def _save_split(x: np.ndarray, y: np.ndarray, classes: list[str], f: Any) -> None:
    np.savez(f, x=x, y=y, classes=np.asarray(classes))


def _safe_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    out = []
    for m in zf.infolist():
        parts = PurePosixPath(m.filename).parts
        if m.is_dir():
            continue
        if m.filename.startswith("/") or ".." in parts or "\\" in m.filename:
            raise PoolSourceMissingError(f"{zf.filename}: member {m.filename!r} has an unsafe path")
        out.append(m)
    return out


def read_task_zip(path: Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names (``classes.txt`` order) and ``{split: (x uint8 NHWC, y)}`` of one task zip."""
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        lines = zf.read("classes.txt").decode("utf-8").splitlines()
        classes = [ln.split("\t")[-1] for ln in lines if ln.strip()]
        folder_of = {ln.split("\t")[1]: int(ln.split("\t")[0]) for ln in lines if ln.strip()}
        splits: dict[str, tuple[list[np.ndarray], list[int]]] = {}
        for m in sorted(_safe_members(zf), key=lambda m: m.filename):
            parts = PurePosixPath(m.filename).parts
            if len(parts) != 3 or parts[1] not in folder_of:
                continue
            with Image.open(io.BytesIO(zf.read(m))) as im:
                arr = np.asarray(im.convert("RGB"))
            xs, ys = splits.setdefault(parts[0], ([], []))
            xs.append(arr)
            ys.append(folder_of[parts[1]])
    return classes, {s: (np.stack(xs), np.asarray(ys, dtype=np.int64)) for s, (xs, ys) in splits.items()}


def build_photo_world(source: Path, out: Path, log: Log = print) -> Pool:
    """Build pool ``photo-v1`` and one task per ``target_*.zip`` of ``source`` under ``out`` (reused when built)."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    stamp = out / "BUILD-photo.json"
    pool_dir = out / "pools" / POOL_NAME
    if stamp.is_file() and json.loads(stamp.read_text()).get("builder_version") == BUILDER_VERSION:
        return open_pool(pool_dir)
    pool_zip = source / POOL_ZIP
    if not pool_zip.is_file():
        raise PoolSourceMissingError(
            f"{pool_zip} not found: the photo world is a development folder (shared/photo-world) with "
            f"{POOL_ZIP} and target_*.zip; point --from at it"
        )
    images = out / "sources" / POOL_NAME
    if not (images / ".complete").is_file():
        log(f"photo world: extracting {POOL_ZIP} into {images}")
        tmp = images.with_name(f".{POOL_NAME}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(pool_zip) as zf:
            for m in _safe_members(zf):
                zf.extract(m, tmp)
        shutil.rmtree(images, ignore_errors=True)
        tmp.rename(images)
        (images / ".complete").touch()
    log(f"photo world: indexing pool {POOL_NAME} at its native size")
    pool = index_image_folder(images, pool_dir, POOL_NAME, image_size=None)
    tasks = []
    for tz in sorted(source.glob("target_*.zip")):
        name = tz.stem.removeprefix("target_")
        log(f"photo world: task {name}")
        classes, splits = read_task_zip(tz)
        d = out / "tasks" / name
        d.mkdir(parents=True, exist_ok=True)
        for split, fname in (("pub", "train"), ("test", "test")):
            x, y = splits[split]
            atomic_write(d / f"{fname}.npz", functools.partial(_save_split, x, y, classes))
        meta = {
            "name": name,
            "classes": classes,
            "n_train": len(splits["pub"][1]),
            "n_test": len(splits["test"][1]),
            "image_shape": list(splits["pub"][0].shape[1:]),
            "note": f"{tz.name}: pub/ → publisher (train.npz), test/ → client test (test.npz)",
        }
        atomic_write_bytes(d / "task.json", json.dumps(meta, indent=2).encode())
        tasks.append(name)
    atomic_write_bytes(
        stamp,
        json.dumps(
            {"builder_version": BUILDER_VERSION, "pool": POOL_NAME, "pool_id": pool.pool_id, "tasks": tasks}, indent=2
        ).encode(),
    )
    log(f"photo world: done, pool_id {pool.pool_id[:16]}…, tasks {', '.join(tasks)}")
    return pool
