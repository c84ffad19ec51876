"""Tasks, their versions and payload downloads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from plada.server import repo
from plada.server.api.deps import CallerDep, FactoryDep, SessionDep, SettingsDep, VersionNumber
from plada.server.api.views import job_info, report_info, task_info, version_info
from plada.server.auth import Caller, require
from plada.server.db import TaskRow
from plada.server.publishing import publish
from plada.shared.errors import PayloadTooLargeError, TaskNotFoundError
from plada.shared.payload import MEDIA_TYPE
from plada.shared.schemas import (
    PublishResponse,
    ReportIn,
    ReportInfo,
    ReportsPublic,
    TaskInfo,
    TasksPublic,
    VersionInfo,
    VersionsPublic,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
_CHUNK = 1 << 20


def _readable(session: SessionDep, name: str, caller: Caller) -> TaskRow:
    """The task, if this caller may read it: token-gated tasks are hidden (404) from anonymous callers."""
    t = repo.get_task(session=session, name=name)
    if t.access == "token" and caller.scope is None:
        raise TaskNotFoundError(f"no task named {name!r}")  # do not reveal that a gated task exists
    return t


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"upload exceeds {limit} bytes (PLADA_MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PublishResponse,
    summary="Publish a task (or a new version of it)",
)
async def create_task(
    request: Request,
    caller: CallerDep,
    factory: FactoryDep,
    settings: SettingsDep,
    spec: Annotated[str, Form(description="TaskSpec as JSON")],
    data: Annotated[UploadFile, File(description="labelled target train set: .npz or .zip")],
) -> PublishResponse:
    """Queues a job that trains a teacher, selects pool items and publishes a new immutable version.

    Needs a ``publish`` token (unless ``PLADA_AUTH=off``); at most ``PLADA_PUBLISH_RATE_PER_MIN`` a minute."""
    require(caller, "publish", "publishing")
    request.app.state.publish_limiter.hit(caller.token_id or (request.client.host if request.client else "?"))
    raw = await _read_limited(data, settings.max_upload_bytes)
    # parsing up to PLADA_MAX_UPLOAD_BYTES and the SQLite commit must not block the event loop
    task, version, job = await run_in_threadpool(
        publish, factory, settings, spec_json=spec, data=raw, filename=data.filename or ""
    )
    with factory() as s:
        info = job_info(s, repo.get_job(session=s, job_id=job.id))
    base = f"/v1/tasks/{task.name}"
    return PublishResponse(
        task=task.name,
        version=version.number,
        job=info,
        links={"job": f"/v1/jobs/{job.id}", "task": base, "payload": f"{base}/versions/{version.number}/payload"},
    )


@router.get("", response_model=TasksPublic, summary="List tasks")
def list_tasks(session: SessionDep, caller: CallerDep) -> TasksPublic:
    rows = [r for r in repo.list_tasks(session=session) if r.access == "public" or caller.scope is not None]
    return TasksPublic(data=[task_info(session, r) for r in rows], count=len(rows))


@router.get("/{task}", response_model=TaskInfo, summary="One task")
def get_task(task: str, session: SessionDep, caller: CallerDep) -> TaskInfo:
    return task_info(session, _readable(session, task, caller))


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
    task: str, version: VersionNumber, report: ReportIn, session: SessionDep, caller: CallerDep
) -> ReportInfo:
    """Needs a token (``read`` is enough) unless ``PLADA_AUTH=off``: anonymous reports would be noise."""
    require(caller, "read", "reporting")
    t = _readable(session, task, caller)
    v = repo.get_version(session=session, task=t, number=version)
    row = repo.add_report(session=session, version=v, report=report)
    session.commit()
    return report_info(t, v, row)


@router.get("/{task}/versions/{version}/reports", response_model=ReportsPublic, summary="Client reports, oldest first")
def list_reports(task: str, version: VersionNumber, session: SessionDep, caller: CallerDep) -> ReportsPublic:
    t = _readable(session, task, caller)
    v = repo.get_version(session=session, task=t, number=version)
    rows = repo.list_reports(session=session, version=v)
    return ReportsPublic(data=[report_info(t, v, r) for r in rows], count=len(rows))


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
    etag = f'"{row.sha256}"'
    headers = {
        "ETag": etag,
        "X-Plada-Version": str(row.number),
        "X-Plada-Task": t.name,
        **({"X-Plada-Signature": row.signature} if row.signature else {}),
        "Cache-Control": "public, max-age=31536000, immutable" if immutable else "no-cache",
    }
    if if_none_match and etag in {v.strip() for v in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    cache: PayloadBytesCache = request.app.state.payload_cache
    data = cache.get(row.id)
    if data is None:
        data = repo.payload_bytes(session=session, version_id=row.id)
        cache.put(row.id, data)
    headers["Content-Disposition"] = f'attachment; filename="{t.name}-v{row.number}.plada"'
    return Response(content=data, media_type=MEDIA_TYPE, headers=headers)


class PayloadBytesCache:
    """Least-recently-used payload bytes by version row id, bounded in total bytes (thread-safe)."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: int, data: bytes) -> None:
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


_PAYLOAD_DOC = {
    200: {"content": {MEDIA_TYPE: {}}, "description": "the payload bytes"},
    304: {"description": "not modified (If-None-Match matched the ETag)"},
}


@router.get(
    "/{task}/versions/{version}/payload",
    response_class=Response,
    responses=_PAYLOAD_DOC,
    summary="Download one version's payload (immutable)",
)
def get_version_payload(
    request: Request,
    task: str,
    version: VersionNumber,
    session: SessionDep,
    caller: CallerDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    return _payload_response(request, task, version, session, caller, if_none_match, immutable=True)


@router.get(
    "/{task}/payload", response_class=Response, responses=_PAYLOAD_DOC, summary="Download the latest ready payload"
)
def get_latest_payload(
    request: Request,
    task: str,
    session: SessionDep,
    caller: CallerDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    return _payload_response(request, task, None, session, caller, if_none_match, immutable=False)
