"""Pool definitions on the client: verified (caps, pool id, signature when a key is pinned) and kept in the
cache like payloads (``definitions/<sha256>.pooldef`` + ``.sig``, refs per server and pool name), so a
re-attach or an offline attach needs no network.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plada.shared.errors import DefinitionError, OfflineError
from plada.shared.files import atomic_write_bytes
from plada.shared.pool.definition import MAX_DEFINITION_BYTES, PoolDefinition, decode_definition
from plada.shared.signing import DEFINITION_DOMAIN, PublicKey

_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_HEX = re.compile(r"[0-9a-f]{64}")
_SERVER = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class LoadedDefinition:
    definition: PoolDefinition
    sha256: str
    signature: str | None
    source: str  # the server URL or file it came from, for reports
    data: bytes = b""


def check_pool_name(name: str) -> str:
    if not _POOL_NAME.fullmatch(name):
        raise DefinitionError(f"{name[:60]!r} is not a pool name (letters, digits, . _ -; at most 100)")
    return name


class DefinitionCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "definitions"

    def _ref(self, server_key: str, pool: str) -> Path:
        if not _SERVER.fullmatch(server_key):
            raise DefinitionError("refusing a definition ref for a malformed server key")
        return self.root / "refs" / server_key / f"{check_pool_name(pool)}.json"

    def ref(self, server_key: str, pool: str) -> str | None:
        """The sha256 of the definition last fetched for ``pool`` from this server, if it is still intact."""
        try:
            sha = str(json.loads(self._ref(server_key, pool).read_text())["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return sha if self.get(sha) is not None else None

    def get(self, sha: str) -> bytes | None:
        if not _HEX.fullmatch(sha):
            return None
        try:
            data = (self.root / f"{sha}.pooldef").read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha else None

    def signature(self, sha: str) -> str | None:
        try:
            return (self.root / f"{sha}.pooldef.sig").read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def put(self, server_key: str, pool: str, data: bytes, signature: str | None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if signature:
            atomic_write_bytes(self.root / f"{sha}.pooldef.sig", signature[:512].encode())
        atomic_write_bytes(self.root / f"{sha}.pooldef", data)
        atomic_write_bytes(self._ref(server_key, pool), json.dumps({"sha256": sha}).encode())
        return sha


def verify_definition(
    data: bytes, signature: str | None, *, trust: PublicKey | None, source: str, max_bytes: int = MAX_DEFINITION_BYTES
) -> LoadedDefinition:
    """Untrusted bytes → a checked definition: the pinned key must have signed them (before any parsing),
    then every structural check of ``decode_definition``."""
    if len(data) > max_bytes:
        raise DefinitionError(f"pool definition from {source} is {len(data):,} bytes, over the cap of {max_bytes:,}")
    sha = hashlib.sha256(data).hexdigest()
    if trust is not None:
        trust.verify(sha, signature, domain=DEFINITION_DOMAIN, what="pool definition")
    return LoadedDefinition(decode_definition(data, max_bytes=max_bytes), sha, signature, source, data)


def read_definition_file(path: str | Path, *, trust: PublicKey | None) -> LoadedDefinition:
    """``pool attach --definition FILE``: the file and its detached ``FILE.sig`` (written by
    ``plada-client pool definition``)."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DefinitionError(f"cannot read pool definition {path}: {exc.strerror}") from exc
    sig_path = Path(str(path) + ".sig")
    signature = sig_path.read_text().strip() if sig_path.is_file() else None
    return verify_definition(data, signature or None, trust=trust, source=str(path))


def cached_definition(cache: DefinitionCache, server_key: str, pool: str, trust: PublicKey | None) -> LoadedDefinition:
    """Offline: the definition this server last gave for ``pool``, re-verified."""
    sha = cache.ref(server_key, pool)
    data = cache.get(sha) if sha else None
    if data is None or sha is None:
        raise OfflineError(f"offline and no cached definition of pool {pool!r} from this server")
    return verify_definition(data, cache.signature(sha), trust=trust, source="cache")


def definition_headers(cache: DefinitionCache, server_key: str, pool: str) -> dict[str, Any]:
    sha = cache.ref(server_key, pool)
    return {"If-None-Match": f'"{sha}"'} if sha else {}
