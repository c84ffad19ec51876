"""Tasks: publish (a new task or a new version of one), list, read, history."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from plada.server import repo
from plada.server.api.deps import CallerDep, FactoryDep, SessionDep, SettingsDep, readable_task
from plada.server.api.hot import HotPath
from plada.server.api.publish_form import read_publish_form
from plada.server.api.views import job_info, task_info, ts
from plada.server.auth import may_see, require, require_owner
from plada.server.publishing import publish
from plada.shared.errors import (
    RateLimitedError,
    TaskNotFoundError,
    UploadTimeoutError,
)
from plada.shared.schemas import (
    PublishResponse,
    TaskEvent,
    TaskHistory,
    TaskInfo,
    TasksPublic,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


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


def _early_owner_check(factory: Any, spec_json: str, caller: Any) -> None:
    """The ownership decision as soon as the spec is in, before the data part is read: a publish to another
    owner's task is refused without spooling its body. Anything else about the spec is checked after."""
    try:
        obj = json.loads(spec_json)
        name = obj.get("name") if isinstance(obj, dict) else None
    except (ValueError, RecursionError):
        return
    if not isinstance(name, str):
        return
    with factory() as s:
        try:
            task = repo.get_task(session=s, name=name)
        except TaskNotFoundError:
            return
        require_owner(caller, task.name, task.owner, "publish a new version of")


class UploadSlots:
    """At most ``n`` uploads received and checked at once per process, and at most ``per_holder`` of them for
    one token (or owner): one publisher trickling bodies cannot hold every slot. A publish waits up to
    ``wait_s`` for its slots *before its body is read*, then gets 429: parallel uploads cannot fill memory or
    the disk, and one publisher's queue never blocks another's."""

    def __init__(self, n: int, wait_s: float = 10.0, per_holder: int | None = None) -> None:
        self.n, self.wait_s = n, wait_s
        self.per_holder = per_holder if per_holder is not None else n
        self._sem: asyncio.Semaphore | None = None  # made on first use, inside the server's event loop
        self._mine: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    async def take(self, holder: str = "") -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.n)
        mine = self._mine.setdefault(holder, asyncio.Semaphore(self.per_holder))
        self._users[holder] = self._users.get(holder, 0) + 1
        deadline = asyncio.get_running_loop().time() + self.wait_s
        try:
            await asyncio.wait_for(mine.acquire(), self.wait_s)
        except TimeoutError:
            self._forget(holder)
            raise RateLimitedError(
                f"this token already has {self.per_holder} uploads in flight (PLADA_MAX_UPLOADS_PER_TOKEN); "
                "retry when one has finished",
                retry_after=5,
            ) from None
        try:
            await asyncio.wait_for(self._sem.acquire(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            mine.release()
            self._forget(holder)
            raise RateLimitedError(
                f"{self.n} uploads are already being processed (PLADA_MAX_CONCURRENT_UPLOADS); retry shortly",
                retry_after=5,
            ) from None

    def _forget(self, holder: str) -> None:
        """Drop a holder's semaphore once nobody uses it (tokens come and go; the table must not grow)."""
        left = self._users.get(holder, 0) - 1
        if left > 0:
            self._users[holder] = left
        else:
            self._users.pop(holder, None)
            self._mine.pop(holder, None)

    def release(self, holder: str = "") -> None:
        assert self._sem is not None
        self._sem.release()
        mine = self._mine.get(holder)
        if mine is not None:
            mine.release()
        self._forget(holder)


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
    holder = caller.owner or str(caller.token_id or (request.client.host if request.client else "?"))
    await slots.take(holder)
    try:
        try:  # the whole body within the deadline: a trickling sender is cut off, its slot freed
            spec, filename, raw = await asyncio.wait_for(
                read_publish_form(
                    request,
                    settings.max_upload_bytes,
                    lambda text: run_in_threadpool(_early_owner_check, factory, text, caller),
                ),
                settings.upload_deadline_s,
            )
        except TimeoutError:
            raise UploadTimeoutError(
                f"the upload did not arrive within {settings.upload_deadline_s:g} s (PLADA_UPLOAD_DEADLINE_S)"
            ) from None
        # parsing up to PLADA_MAX_UPLOAD_BYTES and the SQLite commit must not block the event loop
        task, version, job = await run_in_threadpool(
            publish, factory, settings, spec_json=spec, data=raw, filename=filename, caller=caller
        )
    finally:
        slots.release(holder)
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
    t = readable_task(session, task, caller)
    require_owner(caller, t.name, t.owner, "read the history of")
    rows = repo.task_history(session=session, task=t)
    events = [TaskEvent(at=ts(r.at), actor=r.actor, action=r.action, detail=r.detail) for r in rows]
    return TaskHistory(task=t.name, owner=t.owner, data=events, count=len(events))


@router.get("", response_model=TasksPublic, summary="List tasks")
def list_tasks(session: SessionDep, caller: CallerDep) -> TasksPublic:
    rows = [(t, p) for t, p in repo.tasks_with_pools(session=session) if may_see(t.access, caller)]
    return TasksPublic(data=[task_info(session, t, p) for t, p in rows], count=len(rows))


@router.get("/{task}", response_model=TaskInfo, summary="One task")
async def get_task(task: str, request: Request) -> Response:
    """On the event loop, from a snapshot at most PLADA_SNAPSHOT_TTL_S old (server/api/hot.py)."""
    hot: HotPath = request.app.state.hot
    caller = await hot.caller(request)
    snap = await hot.task(task)
    if snap is None or not may_see(snap["access"], caller):
        raise TaskNotFoundError(f"no task named {task!r}")  # a gated task is not revealed
    return JSONResponse(snap["info"])
