"""Payload downloads: the latest pointer (polled by every agent, long-poll with ?wait=) and immutable
versions; bytes from the per-process cache, the front (X-Accel-Redirect) or a blob host (307)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from plada.server import repo
from plada.server.api.deps import SessionDep, VersionNumber, readable_task
from plada.server.api.hot import HotPath
from plada.server.auth import Caller, may_see
from plada.server.blobs import BlobStore
from plada.server.db import VersionRow
from plada.shared.errors import (
    TaskNotFoundError,
    VersionNotReadyError,
)
from plada.shared.payload import MEDIA_TYPE

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
log = logging.getLogger("plada.server")


MAX_WAIT_S = 60.0  # long-polls are held at most this long (proxies time out idle requests beyond a minute)


def _payload_response(
    request: Request,
    task: str,
    version: int | None,
    session: SessionDep,
    caller: Caller,
    if_none_match: str | None,
    immutable: bool,
) -> Response:
    """Payload bytes with ETag/signature headers. Versions are immutable, so their bytes are kept in a small
    per-process cache; an If-None-Match hit never touches the blob at all. Access is checked every time."""
    t = readable_task(session, task, caller)
    row = repo.ready_version(session=session, task=t, number=version)
    assert row.sha256 is not None
    headers = _payload_headers(request, t.name, t.access, row.number, row.sha256, row.signature, immutable)
    etag = headers["ETag"]
    if if_none_match and etag in {v.strip() for v in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    how = _delivery(request, t.access, immutable)
    if how != "bytes":
        blobs: BlobStore = request.app.state.blobs
        if not blobs.has(row.sha256):  # a pre-blob-store version keeps its bytes in its row
            blobs.put(_stored_bytes(request, session, t, row))
        return _hand_off(request, how, t.name, row.number, row.sha256, headers, row.size_bytes or 0)
    headers["Content-Disposition"] = f'attachment; filename="{t.name}-v{row.number}.plada"'
    cache: PayloadBytesCache = request.app.state.payload_cache
    data = cache.get(row.sha256)
    if data is None:
        data = request.app.state.blobs.get(row.sha256)
        if data is None:  # published before the blob store: its bytes are in the row; move them to a blob
            data = _stored_bytes(request, session, t, row)
            request.app.state.blobs.put(data)
        cache.put(row.sha256, data)
    request.app.state.metrics.payload_bytes.inc(len(data))
    return Response(content=data, media_type=MEDIA_TYPE, headers=headers)


def _stored_bytes(request: Request, session: SessionDep, task: Any, row: Any) -> bytes:
    """A version's bytes from its row (versions from before the blob store). None there either, and the blob
    missing or damaged (kept in quarantine by the store): the version is **broken** — marked so, never served
    again, ``latest`` moved to the newest version still ready — and this request gets a 409 saying so."""
    data = session.scalar(select(VersionRow.payload).where(VersionRow.id == row.id))
    if data is not None and hashlib.sha256(data).hexdigest() == row.sha256:
        return bytes(data)
    number = row.number
    newest = repo.mark_broken(session=session, task=task, version=row)
    session.commit()
    request.app.state.metrics.broken_versions.inc()
    log.error("task %s v%d is broken: its payload blob %s is missing or damaged", task.name, number, row.sha256)
    raise VersionNotReadyError(
        f"version {number} of {task.name!r} is broken: its payload was lost or damaged on the server (kept for "
        f"inspection); " + (f"latest is now version {newest}" if newest else "no other version is ready")
    )


def _payload_headers(
    request: Request, task: str, access: str, number: int, sha: str, signature: str | None, immutable: bool
) -> dict[str, str]:
    headers = {"ETag": f'"{sha}"', "X-Plada-Version": str(number), "X-Plada-Task": task}
    if signature:
        headers["X-Plada-Signature"] = signature
    settings = request.app.state.settings
    if settings.accel_redirect and immutable and access == "public":
        # the front keeps these bytes only briefly (nginx consumes this header): gating the task later must
        # reach plada's own front within PLADA_FRONT_CACHE_S, even though the bytes were public once
        headers["X-Accel-Expires"] = str(settings.front_cache_s)
    # a token-gated payload must never be kept by a shared cache (a CDN would hand it to anyone)
    headers["Cache-Control"] = (
        f"{'public' if access == 'public' else 'private'}, max-age=31536000, immutable"
        if immutable
        else _latest_cache_control(request, access)
    )
    return headers


def _delivery(request: Request, access: str, immutable: bool) -> str:
    """How a payload's bytes leave, the one rule both payload paths follow: ``redirect`` (a public payload,
    with a blob base URL configured: 307 to the CDN or bucket), ``accel`` (behind nginx: Python says yes and
    the proxy sends the blob; a public immutable version is the exception, since the front caches its bytes
    after one pass and a cache hit never reaches Python, docs/operations.md) or ``bytes`` (the API sends them)."""
    settings = request.app.state.settings
    if access == "public" and settings.blob_base_url:
        return "redirect"
    if settings.accel_redirect and not (immutable and access == "public"):
        return "accel"
    return "bytes"


def _hand_off(
    request: Request, how: str, task: str, number: int, sha: str, headers: dict[str, str], size: int
) -> Response:
    """The answer without the bytes, for a blob already in the store: the 307 keeps the ETag, version and
    signature headers, so a client verifies what the blob URL sends against what the API said."""
    settings = request.app.state.settings
    relpath = request.app.state.blobs.relpath(sha)
    headers["Content-Disposition"] = f'attachment; filename="{task}-v{number}.plada"'
    if how == "redirect":
        headers["Location"] = f"{settings.blob_base_url}/{relpath}"
        return Response(status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers=headers)
    headers["X-Accel-Redirect"] = settings.accel_redirect + relpath
    request.app.state.metrics.payload_bytes.inc(size)
    return Response(status_code=status.HTTP_200_OK, headers=headers, media_type=MEDIA_TYPE)


async def _fast_payload(
    request: Request, task: str, version: int | None, if_none_match: str | None, immutable: bool
) -> Response:
    """The payload routes on the event loop: access from the snapshots (server/api/hot.py), bytes from the
    per-process cache, a 304 without touching anything. A miss (or snapshots off) falls through to the full
    handler in the thread pool, which checks everything again."""
    hot: HotPath = request.app.state.hot
    caller = await hot.caller(request)
    snap = await hot.task(task)
    if snap is not None and not may_see(snap["access"], caller):
        raise TaskNotFoundError(f"no task named {task!r}")  # a gated task is not revealed
    found = None
    access = snap["access"] if snap is not None else "public"
    if snap is not None:
        found = snap["latest"] if version is None else await hot.version(task, version)
    if found is not None:
        number, sha, signature = found
        headers = _payload_headers(request, task, access, number, sha, signature, immutable)
        if if_none_match and headers["ETag"] in {v.strip() for v in if_none_match.split(",")}:
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        how = _delivery(request, access, immutable)
        if how != "bytes" and request.app.state.blobs.has(sha):
            return _hand_off(request, how, task, number, sha, headers, 0)
        data = None if how != "bytes" else request.app.state.payload_cache.get(sha)
        if data is not None:
            headers["Content-Disposition"] = f'attachment; filename="{task}-v{number}.plada"'
            request.app.state.metrics.payload_bytes.inc(len(data))
            return Response(content=data, media_type=MEDIA_TYPE, headers=headers)

    def full() -> Response:
        with request.app.state.session_factory() as s:
            return _payload_response(request, task, version, s, caller, if_none_match, immutable=immutable)

    return await run_in_threadpool(full)


class PayloadBytesCache:
    """Least-recently-used payload bytes by sha256, bounded in total bytes (thread-safe)."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


_PAYLOAD_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {MEDIA_TYPE: {}}, "description": "the payload bytes"},
    304: {"description": "not modified (If-None-Match matched the ETag)"},
    307: {
        "description": "public payloads with PLADA_BLOB_BASE_URL set: the bytes are at Location; ETag, "
        "X-Plada-Version and X-Plada-Signature here are what the client verifies them against"
    },
}


@router.get(
    "/{task}/versions/{version}/payload",
    response_class=Response,
    responses=_PAYLOAD_DOC,
    summary="Download one version's payload (immutable)",
)
async def get_version_payload(
    request: Request, task: str, version: VersionNumber, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    return await _fast_payload(request, task, version, if_none_match, immutable=True)


@router.get(
    "/{task}/payload", response_class=Response, responses=_PAYLOAD_DOC, summary="Download the latest ready payload"
)
async def get_latest_payload(
    request: Request,
    task: str,
    if_none_match: Annotated[str | None, Header()] = None,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="long-poll: hold a 304 up to this many seconds for a new version"),
    ] = 0,
) -> Response:
    """What every agent polls: a 304 (or the bytes) from the snapshots on the event loop; misses go through
    the full handler. Public tasks' answers may be cached by a proxy or CDN for PLADA_LATEST_MAX_AGE_S.

    ``?wait=S`` with ``If-None-Match``: while the latest version is still the one named, the answer is held
    (re-checked every half second, on the event loop) until a new version is ready or S seconds pass — an
    agent learns of a new version at once with one open request instead of many polls."""
    deadline = time.monotonic() + wait
    while True:
        resp = await _fast_payload(request, task, None, if_none_match, immutable=False)
        if resp.status_code != status.HTTP_304_NOT_MODIFIED or time.monotonic() >= deadline:
            return resp
        if await request.is_disconnected():
            return resp
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _latest_cache_control(request: Request, access: str) -> str:
    age = request.app.state.settings.latest_max_age_s
    return f"public, max-age={age}" if access == "public" and age > 0 else "no-cache"
