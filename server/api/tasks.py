"""Tasks, their versions and payload downloads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from plada.server import repo
from plada.server.api.deps import MAX_ID, CallerDep, FactoryDep, SessionDep, SettingsDep, VersionNumber
from plada.server.api.hot import HotPath
from plada.server.api.views import job_info, report_info, task_info, ts, version_info
from plada.server.auth import Caller, may_see, require, require_owner
from plada.server.blobs import BlobStore
from plada.server.db import TaskRow
from plada.server.publishing import publish
from plada.shared.errors import (
    PayloadTooLargeError,
    RateLimitedError,
    TaskNotFoundError,
)
from plada.shared.payload import MEDIA_TYPE
from plada.shared.schemas import (
    PublishResponse,
    ReportIn,
    ReportInfo,
    ReportsPublic,
    TaskEvent,
    TaskHistory,
    TaskInfo,
    TasksPublic,
    VersionInfo,
    VersionsPublic,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
_CHUNK = 1 << 20
MAX_WAIT_S = 60.0  # long-polls are held at most this long (proxies time out idle requests beyond a minute)


def _readable(session: SessionDep, name: str, caller: Caller) -> TaskRow:
    """The task, if this caller may read it: token-gated tasks are hidden (404) from anonymous callers."""
    t = repo.get_task(session=session, name=name)
    if not may_see(t.access, caller):
        raise TaskNotFoundError(f"no task named {name!r}")  # do not reveal that a gated task exists
    return t


_PUBLISH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["spec", "data"],
                    "properties": {
                        "spec": {"type": "string", "description": "TaskSpec as JSON"},
                        "data": {
                            "type": "string",
                            "format": "binary",
                            "description": "labelled target train set: .npz or .zip",
                        },
                    },
                }
            }
        },
    }
}


async def _publish_form(request: Request, limit: int) -> tuple[str, str, bytes]:
    """(spec JSON, file name, data bytes) from the multipart body, read only now that the caller is known."""
    try:  # the app's BodyLimit middleware stops the body at PLADA_MAX_UPLOAD_BYTES (+1 MiB of form framing)
        form = await request.form(max_files=1, max_fields=2)
    except StarletteHTTPException as exc:  # the multipart parser's own complaints (bad framing, too many parts)
        if exc.status_code == 413:
            raise
        raise _form_error("body", f"not a valid multipart form: {exc.detail}") from exc
    try:
        spec, data = form.get("spec"), form.get("data")
        if not isinstance(spec, str):
            raise _form_error("spec", "Field required (text: the TaskSpec as JSON)")
        if data is None or isinstance(data, str):
            raise _form_error("data", "Field required (a file: .npz or .zip)")
        chunks, total = [], 0
        while chunk := await data.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(f"upload exceeds {limit} bytes (PLADA_MAX_UPLOAD_BYTES)")
            chunks.append(chunk)
        return spec, data.filename or "", b"".join(chunks)
    finally:
        await form.close()


def _form_error(field: str, msg: str) -> RequestValidationError:
    """The same 422 ``validation_error`` FastAPI gives for a malformed request."""
    return RequestValidationError([{"loc": ("body", field), "msg": msg, "type": "value_error"}])


class UploadSlots:
    """At most ``n`` uploads received and checked at once per process. A publish waits up to ``wait_s`` for a
    slot *before its body is read*, then gets 429: parallel uploads cannot fill memory or the disk."""

    def __init__(self, n: int, wait_s: float = 10.0) -> None:
        self.n, self.wait_s = n, wait_s
        self._sem: asyncio.Semaphore | None = None  # made on first use, inside the server's event loop

    async def take(self) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.n)
        try:
            await asyncio.wait_for(self._sem.acquire(), self.wait_s)
        except TimeoutError:
            raise RateLimitedError(
                f"{self.n} uploads are already being processed (PLADA_MAX_CONCURRENT_UPLOADS); retry shortly",
                retry_after=5,
            ) from None

    def release(self) -> None:
        assert self._sem is not None
        self._sem.release()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PublishResponse,
    summary="Publish a task (or a new version of it)",
    openapi_extra=_PUBLISH_BODY,
)
async def create_task(
    request: Request, caller: CallerDep, factory: FactoryDep, settings: SettingsDep
) -> PublishResponse:
    """Queues a job that trains a teacher, selects pool items and publishes a new immutable version.

    Needs a ``publish`` token (unless ``PLADA_AUTH=off``) and, for an existing task, its owner's token (or an
    admin's); at most ``PLADA_PUBLISH_RATE_PER_MIN`` a minute. The caller is checked before a byte of the body
    is read, so refused uploads cost nothing."""
    require(caller, "publish", "publishing")
    request.app.state.publish_limiter.hit(caller.token_id or (request.client.host if request.client else "?"))
    slots: UploadSlots = request.app.state.upload_slots
    await slots.take()
    try:
        spec, filename, raw = await _publish_form(request, settings.max_upload_bytes)
        # parsing up to PLADA_MAX_UPLOAD_BYTES and the SQLite commit must not block the event loop
        task, version, job = await run_in_threadpool(
            publish, factory, settings, spec_json=spec, data=raw, filename=filename, caller=caller
        )
    finally:
        slots.release()
    with factory() as s:
        info = job_info(s, repo.get_job(session=s, job_id=job.id))
    base = f"/v1/tasks/{task.name}"
    return PublishResponse(
        task=task.name,
        version=version.number,
        job=info,
        links={"job": f"/v1/jobs/{job.id}", "task": base, "payload": f"{base}/versions/{version.number}/payload"},
    )


@router.get("/{task}/history", response_model=TaskHistory, summary="Who created, published and changed a task")
def get_history(task: str, session: SessionDep, caller: CallerDep) -> TaskHistory:
    """The owner's (and admins') view: every version published, every access or owner change, who and when."""
    t = _readable(session, task, caller)
    require_owner(caller, t.name, t.owner, "read the history of")
    rows = repo.task_history(session=session, task=t)
    events = [TaskEvent(at=ts(r.at), actor=r.actor, action=r.action, detail=r.detail) for r in rows]
    return TaskHistory(task=t.name, owner=t.owner, data=events, count=len(events))


@router.get("", response_model=TasksPublic, summary="List tasks")
def list_tasks(session: SessionDep, caller: CallerDep) -> TasksPublic:
    rows = [r for r in repo.list_tasks(session=session) if may_see(r.access, caller)]
    return TasksPublic(data=[task_info(session, r) for r in rows], count=len(rows))


@router.get("/{task}", response_model=TaskInfo, summary="One task")
async def get_task(task: str, request: Request) -> Response:
    """On the event loop, from a snapshot at most PLADA_SNAPSHOT_TTL_S old (server/api/hot.py)."""
    hot: HotPath = request.app.state.hot
    caller = await hot.caller(request)
    snap = await hot.task(task)
    if snap is None or not may_see(snap["access"], caller):
        raise TaskNotFoundError(f"no task named {task!r}")  # a gated task is not revealed
    return JSONResponse(snap["info"])


@router.get("/{task}/versions", response_model=VersionsPublic, summary="A task's versions, oldest first")
def list_versions(task: str, session: SessionDep, caller: CallerDep) -> VersionsPublic:
    t = _readable(session, task, caller)
    rows = repo.list_versions(session=session, task=t)
    sums = repo.report_summaries(session=session, version_ids=[r.id for r in rows])
    return VersionsPublic(data=[version_info(t, r, sums.get(r.id)) for r in rows], count=len(rows))


@router.get("/{task}/versions/{version}", response_model=VersionInfo, summary="One version with its metrics")
def get_version(task: str, version: VersionNumber, session: SessionDep, caller: CallerDep) -> VersionInfo:
    t = _readable(session, task, caller)
    row = repo.get_version(session=session, task=t, number=version)
    return version_info(t, row, repo.report_summaries(session=session, version_ids=[row.id]).get(row.id))


@router.post(
    "/{task}/versions/{version}/reports",
    response_model=ReportInfo,
    status_code=status.HTTP_201_CREATED,
    summary="Report a client's training outcome on this version",
)
def create_report(
    request: Request, task: str, version: VersionNumber, report: ReportIn, session: SessionDep, caller: CallerDep
) -> ReportInfo:
    """Needs a token (``read`` is enough) unless ``PLADA_AUTH=off``: anonymous reports would be noise. One report
    per client and version (a new one replaces the old); at most ``PLADA_REPORT_RATE_PER_MIN`` a minute."""
    require(caller, "read", "reporting")
    request.app.state.report_limiter.hit(caller.token_id or (request.client.host if request.client else "?"))
    t = _readable(session, task, caller)
    v = repo.get_version(session=session, task=t, number=version)
    row = repo.add_report(session=session, version=v, report=report)
    session.commit()
    return report_info(t, v, row)


@router.get("/{task}/versions/{version}/reports", response_model=ReportsPublic, summary="Client reports, oldest first")
def list_reports(
    task: str,
    version: VersionNumber,
    session: SessionDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="reports per page")] = 100,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="continue after this report id (from `next`)")] = 0,
) -> ReportsPublic:
    t = _readable(session, task, caller)
    v = repo.get_version(session=session, task=t, number=version)
    rows = repo.list_reports(session=session, version=v, limit=limit + 1, after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = f"/v1/tasks/{t.name}/versions/{v.number}/reports?limit={limit}&after={rows[-1].id}" if more else None
    return ReportsPublic(data=[report_info(t, v, r) for r in rows], count=len(rows), next=nxt)


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
    t = _readable(session, task, caller)
    row = repo.ready_version(session=session, task=t, number=version)
    assert row.sha256 is not None
    headers = _payload_headers(request, t.name, t.access, row.number, row.sha256, row.signature, immutable)
    etag = headers["ETag"]
    if if_none_match and etag in {v.strip() for v in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    how = _delivery(request, t.access, immutable)
    if how != "bytes":
        blobs: BlobStore = request.app.state.blobs
        if not blobs.has(row.sha256):
            blobs.put(repo.payload_bytes(session=session, version_id=row.id))  # a pre-blob-store version
        return _hand_off(request, how, t.name, row.number, row.sha256, headers, row.size_bytes or 0)
    headers["Content-Disposition"] = f'attachment; filename="{t.name}-v{row.number}.plada"'
    cache: PayloadBytesCache = request.app.state.payload_cache
    data = cache.get(row.sha256)
    if data is None:
        data = request.app.state.blobs.get(row.sha256)
        if data is None:  # published before the blob store: its bytes are in the row; move them to a blob
            data = repo.payload_bytes(session=session, version_id=row.id)
            request.app.state.blobs.put(data)
        cache.put(row.sha256, data)
    request.app.state.metrics.payload_bytes.inc(len(data))
    return Response(content=data, media_type=MEDIA_TYPE, headers=headers)


def _payload_headers(
    request: Request, task: str, access: str, number: int, sha: str, signature: str | None, immutable: bool
) -> dict[str, str]:
    headers = {"ETag": f'"{sha}"', "X-Plada-Version": str(number), "X-Plada-Task": task}
    if signature:
        headers["X-Plada-Signature"] = signature
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
