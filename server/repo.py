"""The only place that reads and writes rows for the API. Keyword-only functions that take a session.

Routes call these and format; the worker uses ``plada.server.jobs``. No SQL lives anywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from plada.server.auth import Caller, require_owner
from plada.server.db import JobRow, PoolRow, ReportRow, TaskEventRow, TaskRow, VersionRow, now
from plada.shared.errors import (
    ForbiddenError,
    JobNotFoundError,
    PoolError,
    TaskConflictError,
    TaskNotFoundError,
    UnknownPoolError,
    VersionNotFoundError,
    VersionNotReadyError,
)
from plada.shared.pool import Pool
from plada.shared.schemas import ReportIn, TaskSpec

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def register_pool(*, session: Session, pool: Pool) -> PoolRow:
    """Insert or refresh a pool by name; a name never silently changes its pool_id."""
    row = session.scalar(select(PoolRow).where(PoolRow.name == pool.name))
    if row is not None and row.pool_id != pool.pool_id:
        raise PoolError(
            f"pool name {pool.name!r} is already registered with pool_id {row.pool_id[:16]}…; "
            f"a changed pool needs a new name"
        )
    if row is None:
        row = PoolRow(
            name=pool.name, pool_id=pool.pool_id, n_items=len(pool), path=str(pool.root.resolve()), info=pool.info
        )
        session.add(row)
    else:
        row.path, row.info = str(pool.root.resolve()), pool.info
    session.flush()
    return row


def list_pools(*, session: Session) -> list[PoolRow]:
    return list(session.scalars(select(PoolRow).order_by(PoolRow.name)))


def resolve_pool(*, session: Session, ref: str) -> PoolRow:
    """A pool by name or by its 64-hex pool_id."""
    col = PoolRow.pool_id if _HEX64.match(ref) else PoolRow.name
    row = session.scalar(select(PoolRow).where(col == ref))
    if row is None:
        known = ", ".join(p.name for p in list_pools(session=session)) or "none"
        raise UnknownPoolError(f"unknown pool {ref!r} (registered: {known})")
    return row


def check_task_name(*, session: Session, spec: TaskSpec) -> TaskRow | None:
    """The existing task of that name (None if new); a task under the same name with other classes is a
    conflict: a second publisher must not silently change what label 3 means for every client."""
    task = session.scalar(select(TaskRow).where(TaskRow.name == spec.name))
    if task is not None and list(task.classes) != list(spec.classes):
        old, new = list(task.classes), list(spec.classes)
        diff = f"{len(old)} classes" if len(old) != len(new) else "classes in another order or with other names"
        raise TaskConflictError(
            f"task {spec.name!r} already exists with {diff} ({', '.join(old[:5])}{', …' if len(old) > 5 else ''}); "
            "publish under another name, or with exactly the same class list"
        )
    return task


def check_may_publish(*, session: Session, spec: TaskSpec, caller: Caller) -> TaskRow | None:
    """The existing task (None if new), after the class-list and ownership checks: only the owner (or an
    admin) publishes a new version of a task."""
    task = check_task_name(session=session, spec=spec)
    if task is not None:
        require_owner(caller, task.name, task.owner, "publish a new version of")
    return task


def add_event(*, session: Session, task: TaskRow, caller: Caller, action: str, **detail: Any) -> None:
    session.add(TaskEventRow(task_ref=task.id, actor=caller.actor[:200], action=action, detail=detail))


def create_publication(
    *, session: Session, spec: TaskSpec, pool: PoolRow, data_path: Path, max_attempts: int, caller: Caller
) -> tuple[TaskRow, VersionRow, JobRow]:
    """Task (created or reused by name), a pending version with the next number, and a queued job.

    Access never changes as a side effect: a spec without ``access`` keeps the task's; an explicit change
    (the owner's, checked above) is recorded in the task's history with who and when."""
    task = check_may_publish(session=session, spec=spec, caller=caller)
    if task is None:
        access = spec.access or "public"
        task = TaskRow(name=spec.name, pool_ref=pool.id, classes=list(spec.classes), access=access, owner=caller.owner)
        session.add(task)
        session.flush()
        add_event(session=session, task=task, caller=caller, action="created", owner=caller.owner, access=access)
    else:
        task.pool_ref, task.classes, task.updated_at = pool.id, list(spec.classes), now()
        if spec.access is not None and spec.access != task.access:
            add_event(session=session, task=task, caller=caller, action="access", old=task.access, new=spec.access)
            task.access = spec.access
    number = (session.scalar(select(func.max(VersionRow.number)).where(VersionRow.task_ref == task.id)) or 0) + 1
    version = VersionRow(
        task_ref=task.id, number=number, status="pending", spec=spec.model_dump(mode="json"), metrics={}
    )
    session.add(version)
    session.flush()
    job = JobRow(
        task_ref=task.id, version_ref=version.id, state="queued", max_attempts=max_attempts, data_path=str(data_path)
    )
    session.add(job)
    add_event(session=session, task=task, caller=caller, action="published", version=number)
    session.flush()
    return task, version, job


def set_owner(*, session: Session, name: str, owner: str, caller: Caller) -> TaskRow:
    """Give a task to another owner (an admin's act; also how tasks from before ownership get one)."""
    task = get_task(session=session, name=name)
    if not caller.is_admin:
        raise ForbiddenError("changing a task's owner needs an admin token")
    add_event(session=session, task=task, caller=caller, action="owner", old=task.owner, new=owner)
    task.owner, task.updated_at = owner, now()
    session.flush()
    return task


def task_history(*, session: Session, task: TaskRow) -> list[TaskEventRow]:
    q = select(TaskEventRow).where(TaskEventRow.task_ref == task.id).order_by(TaskEventRow.id)
    return list(session.scalars(q))


def get_task(*, session: Session, name: str) -> TaskRow:
    row = session.scalar(select(TaskRow).where(TaskRow.name == name))
    if row is None:
        raise TaskNotFoundError(f"no task named {name!r}")
    return row


def list_tasks(*, session: Session) -> list[TaskRow]:
    return list(session.scalars(select(TaskRow).order_by(TaskRow.name)))


def tasks_with_pools(*, session: Session) -> list[tuple[TaskRow, PoolRow]]:
    """Every task with its pool, in one joined query (a task list names each task's pool)."""
    q = select(TaskRow, PoolRow).join(PoolRow, TaskRow.pool_ref == PoolRow.id).order_by(TaskRow.name)
    return [(t, p) for t, p in session.execute(q)]


def pool_of(*, session: Session, task: TaskRow) -> PoolRow:
    row = session.get(PoolRow, task.pool_ref)
    assert row is not None  # foreign key
    return row


def list_versions(*, session: Session, task: TaskRow) -> list[VersionRow]:
    return list(session.scalars(select(VersionRow).where(VersionRow.task_ref == task.id).order_by(VersionRow.number)))


def versions_of(*, session: Session, tasks: list[TaskRow]) -> dict[int, list[VersionRow]]:
    """task id → its versions in order, for many tasks in one query (the dashboard lists them all)."""
    out: dict[int, list[VersionRow]] = {t.id: [] for t in tasks}
    if tasks:
        q = select(VersionRow).where(VersionRow.task_ref.in_(list(out))).order_by(VersionRow.number)
        for v in session.scalars(q):
            out[v.task_ref].append(v)
    return out


def get_version(*, session: Session, task: TaskRow, number: int | None, with_payload: bool = False) -> VersionRow:
    """Version ``number``, or the latest ready one when ``number`` is None."""
    q = select(VersionRow).where(VersionRow.task_ref == task.id)
    if with_payload:
        q = q.options(undefer(VersionRow.payload))
    if number is None:
        if task.latest_version is None:
            raise VersionNotFoundError(f"task {task.name!r} has no ready version yet")
        number = task.latest_version
    row = session.scalar(q.where(VersionRow.number == number))
    if row is None:
        raise VersionNotFoundError(f"task {task.name!r} has no version {number}")
    return row


def ready_version(*, session: Session, task: TaskRow, number: int | None) -> VersionRow:
    """A ready version without its payload blob (enough for ETags and headers)."""
    row = get_version(session=session, task=task, number=number)
    if row.status != "ready" or row.sha256 is None:
        raise VersionNotReadyError(f"version {row.number} of {task.name!r} is {row.status}, not ready")
    return row


def mark_broken(*, session: Session, task: TaskRow, version: VersionRow) -> int | None:
    """A version whose payload bytes are gone or damaged: ``broken`` (never served again; the evidence is kept
    by the blob store), and ``latest`` points to the newest version still ready (None if none). Returns it."""
    version.status = "broken"
    newest = session.scalar(
        select(func.max(VersionRow.number)).where(
            VersionRow.task_ref == task.id, VersionRow.status == "ready", VersionRow.id != version.id
        )
    )
    if task.latest_version == version.number:
        task.latest_version = newest
    session.flush()
    return newest


def payload_bytes(*, session: Session, version_id: int) -> bytes:
    data = session.scalar(select(VersionRow.payload).where(VersionRow.id == version_id))
    if data is None:
        raise VersionNotReadyError("payload missing")
    return data


def get_job(*, session: Session, job_id: int) -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None:
        raise JobNotFoundError(f"no job {job_id}")
    return row


def job_context(*, session: Session, job: JobRow) -> dict[str, Any]:
    task = session.get(TaskRow, job.task_ref)
    version = session.get(VersionRow, job.version_ref)
    assert task is not None and version is not None
    return {"task": task.name, "version": version.number}


def add_report(
    *, session: Session, version: VersionRow, report: ReportIn, reporter: str | None = None, admin: bool = False
) -> ReportRow:
    """Insert or replace this client's report on this version (one per client and version: a client that
    retrains or re-posts cannot flood the table or outvote the others). A report belongs to the ``reporter``
    that first wrote it (client ids are public): another one gets 403, an admin may replace it."""
    if version.status != "ready":
        raise VersionNotReadyError(f"version {version.number} is {version.status}; only ready versions take reports")
    fields = report.model_dump() | {"reporter": reporter}
    for _ in range(2):  # a concurrent first report by the same client wins the insert: update it instead
        row = session.scalar(
            select(ReportRow).where(ReportRow.version_ref == version.id, ReportRow.client_id == report.client_id)
        )
        if row is None:
            row = ReportRow(version_ref=version.id, **fields)
            session.add(row)
        else:
            if row.reporter is not None and row.reporter != reporter and not admin:
                raise ForbiddenError(
                    f"client {report.client_id!r} already reported on version {version.number} with another token; "
                    "report under your own --client-id"
                )
            if row.reporter is not None:
                fields["reporter"] = row.reporter  # an admin's correction keeps the report its owner's
            for k, v in fields.items():
                setattr(row, k, v)
            row.created_at = now()
        try:
            session.flush()
            return row
        except IntegrityError:
            session.rollback()
    raise AssertionError("unreachable: the second try sees the other insert")


def list_reports(
    *, session: Session, version: VersionRow, limit: int | None = None, after: int = 0, newest: bool = False
) -> list[ReportRow]:
    """Reports oldest first from id ``after`` (a page of ``limit``); ``newest``: the latest ``limit``."""
    q = select(ReportRow).where(ReportRow.version_ref == version.id)
    q = q.order_by(ReportRow.id.desc()) if newest else q.where(ReportRow.id > after).order_by(ReportRow.id)
    return list(session.scalars(q.limit(limit) if limit is not None else q))


def latest_reports(*, session: Session, version_ids: list[int], limit_each: int) -> dict[int, list[ReportRow]]:
    """version id → its latest ``limit_each`` reports with an accuracy (newest first), for many versions in one
    query (a window function: SQLite ≥ 3.25 and PostgreSQL have it)."""
    out: dict[int, list[ReportRow]] = {v: [] for v in version_ids}
    if not version_ids:
        return out
    rank = func.row_number().over(partition_by=ReportRow.version_ref, order_by=ReportRow.id.desc()).label("rank")
    inner = (
        select(ReportRow.id, rank)
        .where(ReportRow.version_ref.in_(version_ids), ReportRow.accuracy.is_not(None))
        .subquery()
    )
    q = (
        select(ReportRow)
        .join(inner, inner.c.id == ReportRow.id)
        .where(inner.c.rank <= limit_each)
        .order_by(ReportRow.id.desc())
    )
    for r in session.scalars(q):
        out[r.version_ref].append(r)
    return out


def report_summaries(*, session: Session, version_ids: list[int]) -> dict[int, tuple[int, int, float | None]]:
    """version id → (reports, reports with accuracy, mean accuracy)."""
    if not version_ids:
        return {}
    rows = session.execute(
        select(
            ReportRow.version_ref,
            func.count(ReportRow.id),
            func.count(ReportRow.accuracy),
            func.avg(ReportRow.accuracy),
        )
        .where(ReportRow.version_ref.in_(version_ids))
        .group_by(ReportRow.version_ref)
    )
    return {int(v): (int(n), int(na), float(m) if m is not None else None) for v, n, na, m in rows}


def list_jobs(
    *, session: Session, limit: int = 50, active_only: bool = False, public_only: bool = False
) -> list[JobRow]:
    q = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
    if active_only:
        q = q.where(JobRow.state.in_(("queued", "running")))
    if public_only:  # auth.may_see as a query: only public tasks' jobs (a page of jobs is filtered in SQL)
        q = q.join(TaskRow, TaskRow.id == JobRow.task_ref).where(TaskRow.access == "public")
    return list(session.scalars(q))


def job_contexts(*, session: Session, jobs: list[JobRow]) -> dict[int, dict[str, Any]]:
    """Task name and version number of a page of jobs in one joined query (``job_context`` per job costs two
    queries each)."""
    if not jobs:
        return {}
    q = (
        select(JobRow.id, TaskRow.name, VersionRow.number)
        .join(TaskRow, TaskRow.id == JobRow.task_ref)
        .join(VersionRow, VersionRow.id == JobRow.version_ref)
        .where(JobRow.id.in_([j.id for j in jobs]))
    )
    return {int(i): {"task": name, "version": int(number)} for i, name, number in session.execute(q)}
