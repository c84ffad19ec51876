"""Reference pools as the server knows them: the folders under ``PLADA_POOLS_DIR`` registered in the database
(by the API and by workers, without either importing the other), and the last opened pool kept open."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from plada.server import repo
from plada.server.settings import Settings
from plada.shared.errors import PladaError
from plada.shared.pool import Pool, open_pool

log = logging.getLogger("plada.server")


def register_pools(factory: sessionmaker[Session], settings: Settings) -> list[str]:
    """Register every pool folder under ``settings.pools_dir`` (idempotent)."""
    names: list[str] = []
    root = settings.pools_dir
    if root is None or not root.is_dir():
        return names
    for d in sorted(p for p in root.iterdir() if (p / "pool.json").is_file()):
        try:
            pool = open_pool(d)
            for attempt in range(2):  # API processes starting together race to insert the same pool row
                try:
                    with factory.begin() as s:
                        repo.register_pool(session=s, pool=pool)
                    break
                except IntegrityError:
                    if attempt:
                        raise
        except PladaError as exc:  # one broken pool folder must not keep the others offline
            log.error("pool %s not registered: %s", d, exc.message)
            continue
        names.append(pool.name)
    return names


_POOLS: dict[tuple[str, float], Pool] = {}


def open_registered(path: str) -> Pool:
    """Opening a manifest is not free on large pools: keep it until the manifest file changes."""
    key = (path, (Path(path) / "manifest.npz").stat().st_mtime)
    if key not in _POOLS:
        _POOLS.clear()
        _POOLS[key] = open_pool(Path(path))
    return _POOLS[key]


@dataclass(frozen=True)
class DefinitionFile:
    path: Path
    sha256: str
    signature: str


_DEFINITION_LOCK = threading.Lock()


def definition_file(pool_path: str, settings: Settings, key: Any) -> DefinitionFile:
    """The pool's encoded definition under ``<data_dir>/definitions``, named by the pool and the state of its
    manifest and fingerprints: built on first request (atomically, one builder at a time), then served from
    disk. A 14.2M-item definition is ~0.4 GB, so it is never held in the API process's memory."""
    from plada.shared.files import atomic_write_bytes
    from plada.shared.pool.definition import FINGERPRINTS_FILE, definition_of, encode_definition
    from plada.shared.signing import DEFINITION_DOMAIN

    root = Path(pool_path)
    state = [(root / f).stat().st_mtime_ns if (root / f).is_file() else 0 for f in ("manifest.npz", FINGERPRINTS_FILE)]
    pool = open_registered(pool_path)
    tag = hashlib.sha256(f"{pool.pool_id}|{state}".encode()).hexdigest()[:24]
    out = settings.data_dir / "definitions" / f"{pool.name}-{tag}.pooldef"
    sig = out.with_name(out.name + ".sig")
    with _DEFINITION_LOCK:
        if not (out.is_file() and sig.is_file()):
            data = encode_definition(definition_of(pool))
            sha = hashlib.sha256(data).hexdigest()
            atomic_write_bytes(sig, f"{sha} {key.sign(sha, domain=DEFINITION_DOMAIN)}".encode())
            atomic_write_bytes(out, data)
        sha, signature = sig.read_text().split(" ", 1)
    return DefinitionFile(out, sha, signature.strip())
