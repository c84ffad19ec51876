"""The hot read routes, served on the event loop: no thread-pool hop and no database round trip when a
short-lived in-process snapshot can answer.

What agents poll is ``/healthz``, ``GET /v1/tasks/{task}`` and ``GET /v1/tasks/{task}/payload`` with
``If-None-Match`` (answered 304 when the latest version is the one they have). Each is answered from
snapshots that live ``PLADA_SNAPSHOT_TTL_S`` (default 1 s): the task (its info, access and latest version's
sha256), the caller's token, the database check. A new version, an access change or a revoked token is
therefore visible within that delay on every API process; ``0`` turns the snapshots off. Anything a snapshot
cannot answer (a 200 with bytes, an unknown task, a miss) falls through to the ordinary handler in the thread
pool, with every check made there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from plada.server import repo
from plada.server.api.views import task_info
from plada.server.auth import LOCAL, Caller, authenticate
from plada.shared.errors import PladaError


class Snapshots:
    """name → (expiry, value), bounded in size; thread-safe because misses are filled from the thread pool."""

    def __init__(self, ttl_s: float, max_items: int = 100_000) -> None:
        self.ttl_s, self.max_items = ttl_s, max_items
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: Any, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._items) >= self.max_items:
                self._items.clear()  # crude but bounded: a snapshot is cheap to rebuild
            self._items[key] = (time.monotonic() + self.ttl_s, value)


class HotPath:
    def __init__(self, factory: sessionmaker[Session], ttl_s: float, auth_enabled: bool) -> None:
        self.factory, self.auth_enabled = factory, auth_enabled
        self.tasks = Snapshots(ttl_s)
        self.callers = Snapshots(ttl_s)
        self.health = Snapshots(ttl_s)
        self.versions = Snapshots(ttl_s)

    async def caller(self, request: Request) -> Caller:
        """The caller without the thread pool when anonymous or recently seen; unknown tokens still raise."""
        if not self.auth_enabled:
            return LOCAL
        header = request.headers.get("Authorization")
        if not header:
            return Caller(None, None)
        hit = self.callers.get(header)
        if hit is not None:
            return hit

        def look() -> Caller:
            with self.factory() as s:
                return authenticate(session=s, authorization=header, enabled=True)

        caller = await run_in_threadpool(look)
        self.callers.put(header, caller)
        return caller

    async def task(self, name: str) -> dict[str, Any] | None:
        """{info (JSON-ready), access, latest (number, sha256, signature) or None}; None for no such task."""
        hit = self.tasks.get(name)
        if hit is not None:
            return hit

        def look() -> dict[str, Any] | None:
            with self.factory() as s:
                try:
                    t = repo.get_task(session=s, name=name)
                except PladaError:
                    return None
                latest = None
                if t.latest_version is not None:
                    v = repo.get_version(session=s, task=t, number=t.latest_version)
                    if v.status == "ready" and v.sha256:
                        latest = (v.number, v.sha256, v.signature)
                return {"info": task_info(s, t).model_dump(mode="json"), "access": t.access, "latest": latest}

        snap = await run_in_threadpool(look)
        if snap is not None:
            self.tasks.put(name, snap)
        return snap

    async def version(self, task: str, number: int) -> tuple[int, str, str | None] | None:
        """(number, sha256, signature) of a ready version; None when not ready or absent (not cached)."""
        hit = self.versions.get((task, number))
        if hit is not None:
            return hit

        def look() -> tuple[int, str, str | None] | None:
            with self.factory() as s:
                try:
                    v = repo.ready_version(session=s, task=repo.get_task(session=s, name=task), number=number)
                except PladaError:
                    return None
                return (v.number, v.sha256, v.signature) if v.sha256 else None

        found = await run_in_threadpool(look)
        if found is not None:
            self.versions.put((task, number), found)
        return found

    async def database_ok(self, check: Callable[[], None]) -> None:
        if self.health.get("db") is None:
            await run_in_threadpool(check)
            self.health.put("db", True)
