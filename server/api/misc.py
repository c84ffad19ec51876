"""Jobs, pools and health."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from plada.server import jobs, repo
from plada.server.api.deps import CallerDep, JobId, SessionDep
from plada.server.api.views import job_info, pool_info
from plada.server.auth import may_see, require_owner, sees_all_tasks
from plada.server.db import TaskRow
from plada.server.pools import open_registered
from plada.shared.errors import JobNotFoundError, LayoutNotFoundError
from plada.shared.schemas import Health, JobInfo, JobsPublic, PoolsPublic, SigningKeyInfo

jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
pools_router = APIRouter(prefix="/v1/pools", tags=["pools"])
health_router = APIRouter(tags=["health"])
keys_router = APIRouter(prefix="/v1/signing-key", tags=["trust"])


@keys_router.get("", response_model=SigningKeyInfo, summary="The public key that signs every version (pin it)")
def get_signing_key(request: Request) -> SigningKeyInfo:
    pub = request.app.state.signing_key.public
    return SigningKeyInfo(algorithm="ed25519", public_key=pub.text, key_id=pub.key_id)


@jobs_router.get("", response_model=JobsPublic, summary="Recent jobs, newest first (active ones only with active=true)")
def list_jobs(
    session: SessionDep, caller: CallerDep, active: bool = False, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> JobsPublic:
    rows = repo.list_jobs(session=session, limit=limit, active_only=active, public_only=not sees_all_tasks(caller))
    return JobsPublic(data=[job_info(session, r) for r in rows], count=len(rows))


@jobs_router.get("/{job_id}", response_model=JobInfo, summary="A job's state and progress (0–1)")
def get_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobInfo:
    row = repo.get_job(session=session, job_id=job_id)
    task = session.get(TaskRow, row.task_ref)
    if task is not None and not may_see(task.access, caller):
        raise JobNotFoundError(f"no job {job_id}")
    return job_info(session, row)


@jobs_router.delete("/{job_id}", response_model=JobInfo, summary="Cancel a queued or running job")
def cancel_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobInfo:
    """The task's owner or an admin. A queued job and its pending version are cancelled at once; a running
    job stops at its worker's next progress point and publishes nothing. 409 ``job_finished`` otherwise."""
    row = repo.get_job(session=session, job_id=job_id)
    task = session.get(TaskRow, row.task_ref)
    assert task is not None  # foreign key
    if not may_see(task.access, caller):
        raise JobNotFoundError(f"no job {job_id}")
    require_owner(caller, task.name, task.owner, "cancel a job of")
    jobs.cancel_job(session, row, by=caller.actor)
    session.commit()
    return job_info(session, row)


@pools_router.get("", response_model=PoolsPublic, summary="Registered reference pools")
def list_pools(session: SessionDep) -> PoolsPublic:
    rows = repo.list_pools(session=session)
    return PoolsPublic(data=[pool_info(r) for r in rows], count=len(rows))


@pools_router.get(
    "/{pool}/layout",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "int32 .npy, one id per item"}},
    summary="The pool's coding layout groups (payloads may be coded in this order)",
)
def get_pool_layout(pool: str, session: SessionDep) -> Response:
    """Clients fetch this once to decode payloads coded in the pool's cluster order (X-Plada-Layout-Id)."""
    row = repo.resolve_pool(session=session, ref=pool)
    p = open_registered(row.path)
    groups, layout = p.layout_groups, p.layout
    if groups is None or layout is None:
        raise LayoutNotFoundError(f"pool {row.name!r} has no groups or clusters in its manifest")
    buf = io.BytesIO()
    np.save(buf, groups.astype("<i4"), allow_pickle=False)
    headers = {"X-Plada-Layout-Id": layout.layout_id, "X-Plada-Pool-Id": row.pool_id, "ETag": f'"{layout.layout_id}"'}
    return Response(content=buf.getvalue(), media_type="application/octet-stream", headers=headers)


@health_router.get("/healthz", response_model=Health, summary="Liveness and database check")
async def healthz(request: Request) -> Response:
    """On the event loop; the database is asked at most once per PLADA_SNAPSHOT_TTL_S (a failure is a 500)."""
    from plada.server import __version__

    factory = request.app.state.session_factory

    def check() -> None:
        with factory() as s:
            s.execute(text("SELECT 1"))

    await request.app.state.hot.database_ok(check)
    return JSONResponse({"status": "ok", "version": __version__, "database": "ok"})
