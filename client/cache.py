"""Content-addressed payload cache on disk: ``payloads/<sha256>.plada`` plus per-task refs.

Writes are atomic (temp file + rename) and reads re-hash the bytes, so a torn or tampered file is never used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from plada.shared.payload import payload_sha256
from plada.shared.pool import atomic_write_bytes


def default_cache_dir() -> Path:
    """``$PLADA_CACHE``, else ``$XDG_CACHE_HOME/plada``, else ``~/.cache/plada``."""
    if env := os.environ.get("PLADA_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "plada"


class PayloadCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _blob(self, sha: str) -> Path:
        return self.root / "payloads" / f"{sha}.plada"

    def _ref(self, server_key: str, task: str) -> Path:
        return self.root / "refs" / server_key / f"{task}.json"

    def get(self, sha: str) -> bytes | None:
        """Cached bytes for ``sha``, or None when absent or damaged (a damaged file is removed)."""
        path = self._blob(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if payload_sha256(data) != sha:
            path.unlink(missing_ok=True)
            return None
        return data

    def put(self, data: bytes) -> str:
        sha = payload_sha256(data)
        if not self._blob(sha).is_file():
            atomic_write_bytes(self._blob(sha), data)
        return sha

    def ref(self, server_key: str, task: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._ref(server_key, task).read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def set_ref(self, server_key: str, task: str, *, sha: str, version: int) -> None:
        atomic_write_bytes(self._ref(server_key, task), json.dumps({"sha256": sha, "version": version}).encode())
