"""Jobs: the queue of publishes, their progress, and cancelling one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from plada.server import jobs, repo
from plada.server.api.deps import CallerDep, JobId, SessionDep
from plada.server.api.views import job_info
from plada.server.auth import may_see, require_owner, sees_all_tasks
from plada.server.db import TaskRow
from plada.shared.errors import JobNotFoundError
from plada.shared.schemas import JobInfo, JobsPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobsPublic, summary="Recent jobs, newest first (active ones only with active=true)")
def list_jobs(
    session: SessionDep, caller: CallerDep, active: bool = False, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> JobsPublic:
    rows = repo.list_jobs(session=session, limit=limit, active_only=active, public_only=not sees_all_tasks(caller))
    ctx = repo.job_contexts(session=session, jobs=rows)
    return JobsPublic(data=[job_info(session, r, ctx[r.id]) for r in rows], count=len(rows))


@router.get("/{job_id}", response_model=JobInfo, summary="A job's state and progress (0–1)")
def get_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobInfo:
    row = repo.get_job(session=session, job_id=job_id)
    task = session.get(TaskRow, row.task_ref)
    if task is not None and not may_see(task.access, caller):
        raise JobNotFoundError(f"no job {job_id}")
    return job_info(session, row, admin=caller.is_admin)


@router.delete("/{job_id}", response_model=JobInfo, summary="Cancel a queued or running job")
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
    return job_info(session, row, admin=caller.is_admin)
