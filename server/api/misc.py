"""Jobs, pools and health."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from plada.server import repo
from plada.server.api.deps import SessionDep
from plada.server.api.views import job_info, pool_info
from plada.shared.schemas import Health, JobInfo, PoolsPublic

jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
pools_router = APIRouter(prefix="/v1/pools", tags=["pools"])
health_router = APIRouter(tags=["health"])


@jobs_router.get("/{job_id}", response_model=JobInfo, summary="A job's state and progress (0–1)")
def get_job(job_id: int, session: SessionDep) -> JobInfo:
    return job_info(session, repo.get_job(session=session, job_id=job_id))


@pools_router.get("", response_model=PoolsPublic, summary="Registered reference pools")
def list_pools(session: SessionDep) -> PoolsPublic:
    rows = repo.list_pools(session=session)
    return PoolsPublic(data=[pool_info(r) for r in rows], count=len(rows))


@health_router.get("/healthz", response_model=Health, summary="Liveness and database check")
def healthz(session: SessionDep) -> Health:
    from plada.server import __version__

    session.execute(text("SELECT 1"))
    return Health(status="ok", version=__version__, database="ok")
