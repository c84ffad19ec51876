"""The version pages and their images (server/version_page.py): anonymous, like the dashboard, so token-gated
tasks are not found here; a thumbnail is served only for a pool item the version itself names."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from plada.server import repo
from plada.server.api.deps import SessionDep, VersionNumber
from plada.server.auth import ANONYMOUS, may_see
from plada.server.db import TaskRow, VersionRow
from plada.server.pools import open_registered
from plada.server.version_page import SHOW_PER_CLASS, VersionView, render_version_page, thumbnail_png
from plada.shared.errors import NotFoundError, TaskNotFoundError, VersionNotFoundError
from plada.shared.pool import Pool

router = APIRouter(include_in_schema=False)
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
_SHA = re.compile(r"^[0-9a-f]{64}$")
THUMB_SIDE = 64


def _public_task(session: SessionDep, name: str) -> TaskRow:
    task = repo.get_task(session=session, name=name)
    if not may_see(task.access, ANONYMOUS):  # the pages are anonymous: thumbnails included
        raise TaskNotFoundError(f"no task named {name!r}")
    return task


def _view(request: Request, session: SessionDep, task: TaskRow, number: int) -> tuple[VersionRow, VersionView, Pool]:
    row = repo.ready_version(session=session, task=task, number=number)
    assert row.sha256 is not None
    pool = open_registered(repo.pool_of(session=session, task=task).path)
    view = request.app.state.version_views.get(
        row.sha256, lambda: repo.payload_bytes(session=session, version_id=row.id), row.metrics or {}, pool
    )
    return row, view, pool


@router.get("/tasks/{task}/versions/{version}", response_class=HTMLResponse)
def version_page(
    request: Request,
    task: str,
    version: VersionNumber,
    session: SessionDep,
    compare: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="another version to compare with")] = None,
    candidate: Annotated[str | None, Query(max_length=200, description="a candidate recipe of this version")] = None,
    show: Annotated[int, Query(ge=1, le=48, description="tiles per class")] = SHOW_PER_CLASS,
) -> HTMLResponse:
    t = _public_task(session, task)
    row, view, pool = _view(request, session, t, version)
    other = None
    base = f"/tasks/{t.name}/versions"
    if compare is not None:
        orow, oview, _ = _view(request, session, t, compare)
        other = (f"Changes from v{orow.number} to v{row.number}", oview.payload, f"{base}/{orow.number}")
    elif candidate is not None:
        if candidate not in view.candidates:
            raise NotFoundError(f"version {row.number} of {t.name!r} kept no candidate named {candidate!r}")
        other = (
            f"Shipped selection against candidate {candidate} (+ only shipped, − only the candidate)",
            view.candidates[candidate],
            f"{base}/{row.number}",
        )
    ready = [v.number for v in repo.list_versions(session=session, task=t) if v.status == "ready"]
    reports = repo.list_reports(session=session, version=row, limit=50, newest=True)
    html = render_version_page(
        task=t.name,
        number=row.number,
        versions=ready,
        pool=pool,
        view=view,
        metrics=row.metrics or {},
        size_bytes=row.size_bytes,
        reports=reports,
        show=show,
        compare=other,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/tasks/{task}/versions/{version}/thumbs/{index}.png")
def thumb(request: Request, task: str, version: VersionNumber, index: int, session: SessionDep) -> Response:
    t = _public_task(session, task)
    _row, view, pool = _view(request, session, t, version)
    if index not in view.members:
        raise VersionNotFoundError(f"version {version} of {t.name!r} names no pool item {index}")
    key = f"{pool.pool_id[:16]}-{index}-{THUMB_SIDE}"
    data = request.app.state.thumbs.get(key, lambda: thumbnail_png(pool, index, THUMB_SIDE))
    return Response(data, media_type="image/png", headers=_IMMUTABLE)


@router.get("/tasks/{task}/versions/{version}/uploads/{sha}.png")
def upload_thumb(request: Request, task: str, version: VersionNumber, sha: str, session: SessionDep) -> Response:
    """A flagged upload image (kept as a small PNG when the version was built; the upload itself is gone)."""
    t = _public_task(session, task)
    _row, view, _pool = _view(request, session, t, version)
    named = {p["upload_png"] for p in (view.preview or {}).get("leakage_pairs", [])}
    data = request.app.state.blobs.get(sha) if _SHA.match(sha) and sha in named else None
    if data is None:
        raise VersionNotFoundError(f"version {version} of {t.name!r} has no upload image {sha[:64]!r}")
    return Response(data, media_type="image/png", headers=_IMMUTABLE)
