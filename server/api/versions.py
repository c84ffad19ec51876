"""A task's versions and their metrics."""

from __future__ import annotations

from fastapi import APIRouter

from plada.server import repo
from plada.server.api.deps import CallerDep, SessionDep, VersionNumber, readable_task
from plada.server.api.views import version_info
from plada.shared.schemas import (
    VersionInfo,
    VersionsPublic,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("/{task}/versions", response_model=VersionsPublic, summary="A task's versions, oldest first")
def list_versions(task: str, session: SessionDep, caller: CallerDep) -> VersionsPublic:
    t = readable_task(session, task, caller)
    rows = repo.list_versions(session=session, task=t)
    sums = repo.report_summaries(session=session, version_ids=[r.id for r in rows])
    return VersionsPublic(data=[version_info(t, r, sums.get(r.id)) for r in rows], count=len(rows))


@router.get("/{task}/versions/{version}", response_model=VersionInfo, summary="One version with its metrics")
def get_version(task: str, version: VersionNumber, session: SessionDep, caller: CallerDep) -> VersionInfo:
    t = readable_task(session, task, caller)
    row = repo.get_version(session=session, task=t, number=version)
    return version_info(t, row, repo.report_summaries(session=session, version_ids=[row.id]).get(row.id))
