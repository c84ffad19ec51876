"""Content-addressed payload cache on disk: ``payloads/<sha256>.plada`` plus per-task refs.

Writes are atomic (temp file + rename) and reads re-hash the bytes, so a torn or tampered file is never used.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.cli import safe_text
from plada.shared.errors import VerificationError
from plada.shared.files import atomic_write_bytes
from plada.shared.payload import payload_sha256
from plada.shared.pool import Pool, PoolLayout
from plada.shared.schemas import TASK_NAME_PATTERN

_TASK_NAME = re.compile(TASK_NAME_PATTERN.strip("^$"))
_REF_SERVER = re.compile(r"[0-9a-f]{16}|imported")
_HEX = re.compile(r"[0-9a-f]{16,64}")


def default_cache_dir() -> Path:
    """``$PLADA_CACHE``, else ``$XDG_CACHE_HOME/plada``, else ``~/.cache/plada``."""
    if env := os.environ.get("PLADA_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "plada"


class PayloadCache:
    """Payloads by content address (``payloads/<sha256>.plada``) and small refs naming them per server and
    ``task@version`` (``refs/<server>/<task>@<version>.json``), like the Hugging Face hub cache."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _blob(self, sha: str) -> Path:
        return self.root / "payloads" / f"{sha}.plada"

    def _ref(self, server_key: str, task: str) -> Path:
        """``refs/<server>/<task>@<version>.json``; names come from the network (payload headers, servers), so
        anything but a valid task name, a version and a hex server key is refused before it becomes a path."""
        name, _, version = task.rpartition("@")
        if (
            not _REF_SERVER.fullmatch(server_key)
            or not _TASK_NAME.fullmatch(name)
            or not (version == "latest" or version.isdigit())
        ):
            raise VerificationError(
                f"refusing cache ref {safe_text(repr(server_key + '/' + task), 120)}: "
                "not a valid task name@version (lowercase a-z 0-9 . _ -)"
            )
        return self.root / "refs" / server_key / f"{name}@{version}.json"

    def _layout(self, pool_id: str, layout_id: str) -> Path:
        if not _HEX.fullmatch(pool_id) or not _HEX.fullmatch(layout_id):
            raise VerificationError("refusing a layout whose pool or layout id is not hexadecimal")
        return self.root / "layouts" / pool_id / f"{layout_id}.npy"

    def layout(self, pool_id: str, layout_id: str) -> np.ndarray | None:
        """A coding layout (one group id per pool item) kept for ``pool_id``; None when absent or unreadable."""
        try:
            return np.load(self._layout(pool_id, layout_id), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put_layout(self, pool_id: str, layout_id: str, groups: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(groups, dtype=np.int32))
        atomic_write_bytes(self._layout(pool_id, layout_id), buf.getvalue())

    def get(self, sha: str) -> bytes | None:
        """Cached bytes for ``sha``, or None when absent or damaged (a damaged file is removed)."""
        if not isinstance(sha, str) or not _HEX.fullmatch(sha):
            return None
        path = self._blob(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if payload_sha256(data) != sha:
            path.unlink(missing_ok=True)
            return None
        return data

    @staticmethod
    def _intact(path: Path) -> bool:
        try:
            return payload_sha256(path.read_bytes()) == path.stem
        except OSError:
            return False

    def put(self, data: bytes) -> str:
        sha = payload_sha256(data)
        if not self._blob(sha).is_file():
            atomic_write_bytes(self._blob(sha), data)
        return sha

    def put_signature(self, sha: str, signature: str) -> None:
        """The server's detached signature of payload ``sha`` (verified by the caller when a key is pinned)."""
        if not _HEX.fullmatch(sha) or len(signature) > 512:
            raise VerificationError("refusing a signature that is too long or for a non-hex sha256")
        atomic_write_bytes(self.root / "signatures" / f"{sha}.sig", signature.encode())

    def signature(self, sha: str) -> str | None:
        if not _HEX.fullmatch(sha):
            return None
        try:
            return (self.root / "signatures" / f"{sha}.sig").read_text().strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def ref(self, server_key: str, task: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._ref(server_key, task).read_text()))
        except (OSError, ValueError, TypeError):  # absent, unreadable or not a JSON object: no ref
            return None

    def set_ref(self, server_key: str, task: str, *, sha: str, version: int) -> None:
        atomic_write_bytes(self._ref(server_key, task), json.dumps({"sha256": sha, "version": version}).encode())

    # -- listing, pruning, importing (``plada-client cache ls | prune``, ``plada-client import``) -------------

    def refs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every ref as (server key, ``task@version``, {sha256, version})."""
        out = []
        base = self.root / "refs"
        for path in sorted(base.glob("*/*.json")) if base.is_dir() else []:
            try:
                out.append((path.parent.name, path.stem, dict(json.loads(path.read_text()))))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def find(self, task: str, version: int | str = "latest") -> dict[str, Any] | None:
        """The cached ref for ``task`` at ``version`` from any server (or an import); for ``latest`` the highest
        version cached. Used offline, where the server cannot be asked."""
        best: dict[str, Any] | None = None
        for _server, name, ref in self.refs():
            t = name.rpartition("@")[0]
            if t != task or self.get(ref.get("sha256", "")) is None:
                continue
            if version != "latest" and int(ref.get("version", -1)) != int(version):
                continue
            if best is None or int(ref.get("version", 0)) > int(best.get("version", 0)):
                best = ref
        return best

    def entries(self) -> list[dict[str, Any]]:
        """One row per cached payload: sha256, task, version, pool, bytes, refs, and whether it verifies."""
        from plada.shared.errors import PayloadError
        from plada.shared.payload import read_header

        by_sha: dict[str, list[str]] = {}
        for server, name, ref in self.refs():
            by_sha.setdefault(str(ref.get("sha256")), []).append(f"{server}/{name}")
        rows = []
        for path in sorted((self.root / "payloads").glob("*.plada")):
            data = path.read_bytes()
            row: dict[str, Any] = {"sha256": path.stem, "bytes": len(data), "path": str(path)}
            try:
                h = read_header(data)[0]
                row |= {"task": h["task"], "version": h["version"], "pool": h.get("pool_name") or h["pool_id"][:16]}
                row["ok"] = payload_sha256(data) == path.stem
            except PayloadError:
                row["ok"] = False
            row["refs"] = by_sha.get(path.stem, [])
            rows.append(row)
        return rows

    def prune(self, *, everything: bool = False, dry_run: bool = False) -> list[Path]:
        """Remove payloads no ref points at, damaged payloads, refs to missing payloads and stray temp files;
        with ``everything`` the whole cache. Returns what was (or would be) removed."""
        doomed: list[Path] = []
        if everything:
            doomed = [p for p in self.root.rglob("*") if p.is_file()]
        else:
            live = {str(ref.get("sha256")) for _s, _n, ref in self.refs()}
            for path in (self.root / "payloads").glob("*"):
                if (
                    path.name.startswith(".")
                    or path.suffix != ".plada"
                    or path.stem not in live
                    or not self._intact(path)
                ):
                    doomed.append(path)
            gone = {p.stem for p in doomed}
            for server, name, ref in self.refs():
                sha = str(ref.get("sha256"))
                if sha in gone or not self._blob(sha).is_file():
                    doomed.append(self._ref(server, name))
        if not dry_run:
            for path in doomed:
                path.unlink(missing_ok=True)
        return doomed

    def import_bytes(self, data: bytes, *, task: str, version: int) -> str:
        """Store a payload that arrived by other means (already verified by the caller) under ``imported``."""
        self._ref("imported", f"{task}@{int(version)}")  # a hostile name is refused before anything is written
        sha = self.put(data)
        self.set_ref("imported", f"{task}@{version}", sha=sha, version=version)
        latest = self.ref("imported", f"{task}@latest")
        if latest is None or int(latest.get("version", 0)) <= version:
            self.set_ref("imported", f"{task}@latest", sha=sha, version=version)
        return sha


def resolve_layout(header: dict[str, Any], pool: Pool, cache: PayloadCache | None) -> PoolLayout | None:
    """The layout a payload header names, from the pool itself or the client cache; None if neither has it
    (or the payload names none: then the pool's own layout, as the decoder expects)."""
    wanted = header.get("codec", {}).get("layout")
    if wanted is None or (pool.layout is not None and pool.layout.layout_id == wanted):
        return pool.layout
    groups = cache.layout(pool.pool_id, str(wanted)) if cache is not None else None
    if groups is None or len(groups) != len(pool):
        return None
    layout = PoolLayout.from_groups(groups)
    return layout if layout.layout_id == wanted else None


def offline_mode() -> bool:
    """``PLADA_OFFLINE`` set to 1/true/yes (as ``HF_HUB_OFFLINE``)."""
    return os.environ.get("PLADA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
