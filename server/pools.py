"""Reference pools as the server knows them: the folders under ``PLADA_POOLS_DIR`` registered in the database
(by the API and by workers, without either importing the other), and the last opened pool kept open."""

from __future__ import annotations

import logging
from pathlib import Path

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
