"""Treating every byte from the network as hostile: a deadline for a whole call, capped bodies, safe text.

httpx has a timeout per socket operation only, so a server that trickles one byte just inside it holds a call
forever (headers included). ``deadline_transport`` wraps the connection pool's network backend so that each
socket read, write and connect waits at most until the calling thread's deadline (``call_deadline``).
Bodies are read raw with a cap, and the client asks for ``Accept-Encoding: identity``: a server that
compresses anyway is refused, so a small body can never inflate in memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

JSON_MAX_BYTES = 8 << 20  # task and version lists, job records, problems: far below this


class _Deadline(threading.local):
    at: float | None = None


_DEADLINE = _Deadline()


@contextmanager
def call_deadline(seconds: float) -> Iterator[float]:
    """Every socket operation of this thread inside the block ends by ``seconds`` from now."""
    outer = _DEADLINE.at
    at = time.monotonic() + seconds
    _DEADLINE.at = at if outer is None else min(at, outer)
    try:
        yield _DEADLINE.at
    finally:
        _DEADLINE.at = outer


def _clamp(timeout: float | None) -> float | None:
    at = _DEADLINE.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _clamp(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _clamp(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport() -> httpx.HTTPTransport:
    """httpx's own transport, its network backend wrapped to honour ``call_deadline``. The backend is reached
    through httpcore's pool (pinned versions; ``tests/unit/test_hostile_server.py`` fails if that changes)."""
    transport = httpx.HTTPTransport()
    pool = transport._pool
    pool._network_backend = _Backend(pool._network_backend)
    return transport


# C0/C1 controls (ESC starts terminal escape sequences) and the bidirectional overrides that reorder what a
# terminal shows ("Trojan source"); shown as visible escapes instead
