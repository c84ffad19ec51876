"""Content-addressed payload blobs: ``<blob_dir>/sha256/<aa>/<sha256>``, written once, atomically.

Workers write a version's payload here before its row says ``ready``; the database keeps only the digest.
Several API replicas and workers share the folder (a shared volume). A front proxy serves the bytes
straight from it (``X-Accel-Redirect``, docs/operations.md), so payload bytes never pass through Python on
that path; without a proxy the API reads them from here. Versions published before the blob store kept their
bytes in the database; the API moves such a payload here the first time it is read.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from plada.shared.files import atomic_write_bytes

_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def relpath(self, sha: str) -> str:
        """The blob's path under the store root (also its URL path under a proxy's internal location)."""
        if not _HEX.match(sha):
            raise ValueError("a blob name is a lowercase sha256")
        return f"sha256/{sha[:2]}/{sha}"

    def path(self, sha: str) -> Path:
        return self.root / self.relpath(sha)

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 (no-op when present) and return the digest."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path(sha)
        if not path.is_file():
            atomic_write_bytes(path, data)
        return sha

    def get(self, sha: str) -> bytes | None:
        """The bytes, or None when absent or damaged. A damaged blob is kept as evidence under
        ``quarantine/`` (never deleted: someone must find out what damaged it) and the caller decides."""
        path = self.path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            self.quarantine(sha)
            return None
        return data

    def quarantine(self, sha: str) -> Path | None:
        """Move a damaged blob to ``quarantine/<sha>.<time>`` (the evidence stays; the name is free again)."""
        src = self.path(sha)
        dst = self.root / "quarantine" / f"{sha}.{time.time_ns()}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return None
        return dst

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()
