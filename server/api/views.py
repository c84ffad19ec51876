"""Rows → public schemas. Kept apart from the routes so every route formats the same way."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from plada.server import repo
from plada.server.db import JobRow, PoolRow, ReportRow, TaskRow, VersionRow
from plada.shared.schemas import (
    ErrorInfo,
    JobInfo,
    PoolInfo,
    ReportInfo,
    ReportSummary,
    TaskInfo,
    VersionInfo,
)


def ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def pool_info(row: PoolRow) -> PoolInfo:
    return PoolInfo(
        name=row.name,
        pool_id=row.pool_id,
        n_items=row.n_items,
        kind=str(row.info.get("kind", "")),
        image_shape=[int(v) for v in row.info.get("image_shape", [])],
    )


def task_info(session: Session, row: TaskRow, pool: PoolRow | None = None) -> TaskInfo:
    """``pool``: the task's pool when the caller already has it (a list joins them in; one task reads it)."""
    pool = pool or repo.pool_of(session=session, task=row)
    return TaskInfo(
        access=row.access,
        name=row.name,
        classes=list(row.classes),
        pool_id=pool.pool_id,
        pool_name=pool.name,
        latest_version=row.latest_version,
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
    )


def version_info(task: TaskRow, row: VersionRow, reports: tuple[int, int, float | None] | None = None) -> VersionInfo:
    url = f"/v1/tasks/{task.name}/versions/{row.number}/payload" if row.status == "ready" else None
    return VersionInfo(
        task=task.name,
        version=row.number,
        status=row.status,
        sha256=row.sha256,
        signature=row.signature,
        size_bytes=row.size_bytes,
        n_items=row.n_items,
        created_at=ts(row.created_at),
        metrics=row.metrics or {},
        payload_url=url,
        reports=ReportSummary(count=reports[0], with_accuracy=reports[1], mean_accuracy=reports[2])
        if reports
        else ReportSummary(count=0, with_accuracy=0),
    )


def report_info(task: TaskRow, version: VersionRow, row: ReportRow) -> ReportInfo:
    return ReportInfo(
        id=row.id,
        task=task.name,
        version=version.number,
        client_id=row.client_id,
        student_arch=row.student_arch,
        epochs=row.epochs,
        accuracy=row.accuracy,
        n_test=row.n_test,
        wall_s=row.wall_s,
        extra=row.extra or {},
        coverage=row.coverage or None,
        created_at=ts(row.created_at),
    )


def job_info(session: Session, row: JobRow, context: dict[str, Any] | None = None, *, admin: bool = False) -> JobInfo:
    """``context`` (task name, version number) from ``repo.job_contexts`` when formatting a list. Who cancelled a
    job (a token's id, name and owner) is for admins: everyone else reads that it was cancelled."""
    ctx = context if context is not None else repo.job_context(session=session, job=row)
    message = row.error_message or ""
    if row.error_code == "job_cancelled" and not admin:
        message = "cancelled by the task's owner or an admin"
    err = ErrorInfo(code=row.error_code, message=message) if row.error_code else None
    return JobInfo(
        id=row.id,
        task=ctx["task"],
        version=ctx["version"],
        state=row.state,
        progress=row.progress,
        message=row.message,
        error=err,
        attempts=row.attempts,
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
    )
