"""The teacher's view of a pool, cached: a version that changes only the selector, ``keep`` or ``max_bytes``
re-uses the teacher and its pool scores instead of training and scoring again.

The key is everything the teacher's output depends on: the upload's bytes (images and labels), the teacher
options (arch, seed, validation share, …), the pool id and the feature index's model id. An entry is a folder
``<root>/<key>/`` holding ``arrays.npz`` (pool logits, upload features, pool features when they came from the
teacher itself) and ``meta.json``; it is written to a temporary folder and renamed, so a crash leaves no half
entry, and the oldest entries are removed once the folder exceeds its byte budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.schemas import TeacherOptions


def teacher_key(x: np.ndarray, y: np.ndarray, opts: TeacherOptions, pool_id: str, index_model: str, k: int) -> str:
    h = hashlib.sha256(b"plada-teacher-v1\0")
    for arr in (np.ascontiguousarray(x), np.ascontiguousarray(y.astype(np.int64))):
        h.update(repr((arr.shape, str(arr.dtype))).encode())
        h.update(arr.tobytes())
    h.update(opts.model_dump_json().encode())
    h.update(f"\0{pool_id}\0{index_model}\0{k}".encode())
    return h.hexdigest()


class TeacherCache:
    def __init__(self, root: Path, max_bytes: int = 4 << 30) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def get(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        d = self.root / key
        try:
            meta = json.loads((d / "meta.json").read_text())
            data = (d / "arrays.npz").read_bytes()  # np.load leaks its handle on a damaged zip: read first
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except Exception:  # absent, half-removed by another worker's eviction, or damaged: a miss, never an error
            return None
        with contextlib.suppress(OSError):
            os.utime(d)  # least recently used goes first
        return meta, arrays

    def put(self, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Best effort: a full disk or another worker writing the same key at once must not fail the job."""
        if self.max_bytes <= 0:
            return
        with contextlib.suppress(OSError):
            self._put(key, meta, arrays)
            self._evict()

    def _put(self, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # unique per writer (process and call): threads of one worker share a pid, and one writer's clean-up
        # must never remove another's half-written entry
        tmp = self.root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            np.savez(tmp / "arrays.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds typed as bool
            (tmp / "meta.json").write_text(json.dumps(meta))
            final = self.root / key
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _evict(self) -> None:
        entries = []
        for d in self.root.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            except OSError:  # removed meanwhile by another worker
                continue
            entries.append((d.stat().st_mtime, size, d))
        total = sum(s for _, s, _ in entries)
        for _, size, d in sorted(entries):  # oldest first; the newest entry always stays
            if total <= self.max_bytes or d == max(entries)[2]:
                break
            shutil.rmtree(d, ignore_errors=True)
            total -= size
