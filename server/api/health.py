"""Liveness: /healthz on the event loop, the database asked at most once a snapshot period."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from plada.shared.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness and database check")
async def healthz(request: Request) -> Response:
    """On the event loop; the database is asked at most once per PLADA_SNAPSHOT_TTL_S (a failure is a 500)."""
    from plada.server import __version__

    factory = request.app.state.session_factory

    def check() -> None:
        with factory() as s:
            s.execute(text("SELECT 1"))

    await request.app.state.hot.database_ok(check)
    return JSONResponse({"status": "ok", "version": __version__, "database": "ok"})
