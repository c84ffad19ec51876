"""Client reports: what a client's student reached on a version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from plada.server import repo
from plada.server.api.deps import MAX_ID, CallerDep, SessionDep, VersionNumber, readable_task
from plada.server.api.views import report_info
from plada.server.auth import require
from plada.shared.schemas import (
    ReportIn,
    ReportInfo,
    ReportsPublic,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


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
    t = readable_task(session, task, caller)
    v = repo.get_version(session=session, task=t, number=version)
    reporter = f"owner:{caller.owner}" if caller.owner else f"token:{caller.token_id}"
    row = repo.add_report(session=session, version=v, report=report, reporter=reporter, admin=caller.is_admin)
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
    t = readable_task(session, task, caller)
    v = repo.get_version(session=session, task=t, number=version)
    rows = repo.list_reports(session=session, version=v, limit=limit + 1, after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = f"/v1/tasks/{t.name}/versions/{v.number}/reports?limit={limit}&after={rows[-1].id}" if more else None
    return ReportsPublic(data=[report_info(t, v, r) for r in rows], count=len(rows), next=nxt)
