"""A durable job queue on the database: claim with a lease, heartbeat, finish or fail, retry after a crash.

A worker owns a job only while its lease holds. If it dies, the lease runs out and the next ``claim_job``
takes the job again (up to ``max_attempts``). Every write is a short transaction, and every update after the
claim checks ``worker_id`` so a worker that lost its lease can never overwrite a newer owner's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from plada.server.db import JobRow, PoolRow, TaskRow, VersionRow, now
from plada.shared.errors import JobFinishedError


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    task: str
    version: int
    version_ref: int
    spec: dict[str, Any]
    data_path: str
    pool_path: str
    attempt: int


def _claimable(t: float) -> Any:
    return or_(JobRow.state == "queued", and_(JobRow.state == "running", JobRow.lease_until < t))


def _expire_exhausted(session: Session, t: float) -> None:
    """Running jobs whose lease ran out after their last allowed attempt become failed."""
    dead = session.scalars(
        select(JobRow).where(JobRow.state == "running", JobRow.lease_until < t, JobRow.attempts >= JobRow.max_attempts)
    ).all()
    for job in dead:
        job.state, job.updated_at = "failed", t
        job.error_code, job.error_message = "worker_lost", f"worker lost the job {job.attempts} times"
        version = session.get(VersionRow, job.version_ref)
        if version is not None:
            version.status = "failed"


def claim_job(factory: sessionmaker[Session], *, worker_id: str, lease_s: float) -> ClaimedJob | None:
    """Atomically take the oldest claimable job, or return None when the queue is empty."""
    for _ in range(5):
        with factory.begin() as s:
            t = now()
            _expire_exhausted(s, t)
            cand = s.scalar(
                select(JobRow.id)
                .where(_claimable(t), JobRow.attempts < JobRow.max_attempts)
                .order_by(JobRow.id)
                .limit(1)
            )
            if cand is None:
                return None
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == cand, _claimable(t))
                .values(
                    state="running",
                    worker_id=worker_id,
                    lease_until=t + lease_s,
                    attempts=JobRow.attempts + 1,
                    updated_at=t,
                    progress=0.0,  # a retried job starts over; the bar must not claim the dead worker's work
                    message="claimed",
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
                continue  # another worker won the race; try the next one
            job = s.get(JobRow, cand)
            assert job is not None
            s.refresh(job)
            task = s.get(TaskRow, job.task_ref)
            version = s.get(VersionRow, job.version_ref)
            assert task is not None and version is not None
            pool = s.get(PoolRow, task.pool_ref)
            assert pool is not None
            return ClaimedJob(
                id=job.id,
                task=task.name,
                version=version.number,
                version_ref=version.id,
                spec=dict(version.spec),
                data_path=job.data_path,
                pool_path=pool.path,
                attempt=job.attempts,
            )
    return None


def _owned(job_id: int, worker_id: str) -> Any:
    return and_(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.state == "running")


def heartbeat(
    factory: sessionmaker[Session],
    *,
    job_id: int,
    worker_id: str,
    lease_s: float,
    progress: float | None = None,
    message: str | None = None,
) -> bool:
    """Extend the lease (and record progress); False means the job is no longer ours."""
    values: dict[str, Any] = {"lease_until": now() + lease_s, "updated_at": now()}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    if message is not None:
        values["message"] = message[:500]
    with factory.begin() as s:
        res = s.execute(update(JobRow).where(_owned(job_id, worker_id)).values(**values))
        return bool(res.rowcount == 1)  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult


def complete_job(
    factory: sessionmaker[Session],
    *,
    job: ClaimedJob,
    worker_id: str,
    payload: bytes,
    sha256: str,
    n_items: int,
    metrics: dict[str, Any],
    message: str = "done",
    signature: str | None = None,
) -> bool:
    """Publish the version and finish the job in one transaction; nothing is written if we lost the lease.

    ``message`` is what a publisher reads first: "done", or a warning such as a far-OOD prediction."""
    with factory.begin() as s:
        t = now()
        res = s.execute(
            update(JobRow)
            .where(_owned(job.id, worker_id))
            .values(state="succeeded", progress=1.0, message=message[:2000], updated_at=t, lease_until=None)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
            return False
        version = s.get(VersionRow, job.version_ref)
        assert version is not None
        # the bytes live in the blob store (written by the worker before this commit); the row keeps the digest
        version.status, version.payload, version.sha256 = "ready", None, sha256
        version.signature = signature
        version.size_bytes, version.n_items, version.metrics, version.ready_at = len(payload), n_items, metrics, t
        task = s.get(TaskRow, version.task_ref)
        assert task is not None
        task.latest_version = max(task.latest_version or 0, version.number)
        task.updated_at = t
        return True


def fail_job(
    factory: sessionmaker[Session], *, job: ClaimedJob, worker_id: str, code: str, message: str, retry: bool
) -> str:
    """Record a failure; a retryable one goes back to the queue while attempts remain. Returns the new state."""
    with factory.begin() as s:
        row = s.scalar(select(JobRow).where(_owned(job.id, worker_id)))
        if row is None:
            return "lost"
        t = now()
        row.error_code, row.error_message, row.updated_at = code, message[:2000], t
        row.lease_until = None
        if retry and row.attempts < row.max_attempts:
            row.state, row.worker_id, row.message = "queued", None, f"retrying after: {message[:200]}"
        else:
            row.state, row.message = "failed", "failed"
            version = s.get(VersionRow, job.version_ref)
            if version is not None:
                version.status = "failed"
        return row.state


ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")


def cancel_job(session: Session, job: JobRow, *, by: str) -> JobRow:
    """Cancel a queued or running job: it and its pending version become ``cancelled`` at once. A running job's
    worker finds out at its next heartbeat (the job is no longer running under its id), stops at its next
    progress point and writes nothing: ``complete_job`` only publishes a job it still owns."""
    if job.state not in ACTIVE:
        raise JobFinishedError(f"job {job.id} already {job.state}; only queued or running jobs can be cancelled")
    t = now()
    job.state, job.updated_at, job.lease_until = "cancelled", t, None
    job.error_code, job.error_message, job.message = "job_cancelled", f"cancelled by {by}"[:2000], "cancelled"
    version = session.get(VersionRow, job.version_ref)
    if version is not None and version.status == "pending":
        version.status = "cancelled"
    session.flush()
    return job
