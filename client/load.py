"""A payload from wherever the user has it: a file (with its detached ``.sig``), a server, or the cache.

The CLI's commands and scripts use the same rules: a file is checked against the local pool (pool id, coding
layout from the pool or the cache) and, when a key is pinned, its signature must verify; a task comes through
``PladaClient.fetch`` (online, or from the cache when offline). Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plada.client.cache import PayloadCache, resolve_layout
from plada.shared.errors import PayloadError
from plada.shared.files import atomic_write_bytes
from plada.shared.payload import Payload, check_pool, decode_payload, read_header
from plada.shared.pool import Pool, PoolLayout
from plada.shared.signing import PublicKey


@dataclass(frozen=True)
class PayloadFile:
    payload: Payload
    data: bytes
    signature: str | None  # the detached signature beside the file (FILE.sig), if any


def read_bytes(path: str | Path) -> bytes:
    """A payload file's bytes; an unreadable file is a one-line ``PayloadError``."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PayloadError(f"cannot read {path}: {exc.strerror}") from exc


def sidecar(path: str | Path) -> tuple[Path, str | None]:
    """A payload file's detached signature (``FILE.sig``, written by ``pull``): its path and text, if any."""
    sig = Path(str(path) + ".sig")
    return sig, (sig.read_text().strip() or None) if sig.is_file() else None


def write_payload_file(out: Path, data: bytes, signature: str | None) -> None:
    """The payload and, beside it, its detached signature (so ``inspect`` and ``import`` can check it later);
    both written atomically."""
    if signature:
        atomic_write_bytes(out.with_name(out.name + ".sig"), (signature + "\n").encode())
    atomic_write_bytes(out, data)


def layout_for(data: bytes, pool: Pool | None, cache_dir: str | Path | None) -> PoolLayout | None:
    """The coding layout a local payload file needs: the pool's own, or one the cache kept from a server."""
    if pool is None:
        return None
    return resolve_layout(read_header(data)[0], pool, PayloadCache(Path(cache_dir) if cache_dir else None))


def open_payload_file(
    path: str | Path,
    *,
    pool: Pool | None = None,
    cache_dir: str | Path | None = None,
    trust: PublicKey | None = None,
) -> PayloadFile:
    """Read and fully verify a payload file: checked against ``pool`` (before decoding, so a payload for
    another pool says so instead of failing to decode) and, with a pinned key, its ``.sig`` must verify."""
    data = read_bytes(path)
    if pool is not None:
        check_pool(read_header(data)[0], pool)
    layout = layout_for(data, pool, cache_dir)
    payload = decode_payload(data, layout=layout)
    _, signature = sidecar(path)
    if trust is not None:
        trust.verify(payload.sha256 or "", signature)
    return PayloadFile(payload, data, signature)
