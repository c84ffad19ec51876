"""The FastAPI application factory. Settings come in; nothing is read from the environment here.

Every error leaves as ``application/problem+json`` with a stable ``code``: ``PladaError`` subclasses carry
their own; request validation is ``validation_error``; unknown routes ``not_found``; anything unexpected is
logged and answered as ``internal_error`` without internals. Swagger UI is served from the bundled assets of
``fastapi-offline`` so ``/docs`` works with no network.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plada.server import __version__
from plada.server.api import health, jobs, keys, payloads, pools, reports, tasks, versions
from plada.server.api.deps import SessionDep
from plada.server.api.hot import HotPath
from plada.server.api.pages import router as pages_router
from plada.server.api.payloads import PayloadBytesCache
from plada.server.api.tasks import UploadSlots
from plada.server.auth import RateLimiter
from plada.server.blobs import BlobStore
from plada.server.dashboard import render_dashboard
from plada.server.db import init_db, make_engine
from plada.server.html import FAVICON_ICO
from plada.server.metrics import CONTENT_TYPE as METRICS_TYPE
from plada.server.metrics import Metrics, RequestMetrics
from plada.server.pools import register_pools
from plada.server.publishing import sweep_finished_uploads, sweep_orphan_uploads
from plada.server.settings import Settings
from plada.server.version_page import ThumbCache, VersionViews
from plada.shared.errors import PladaError
from plada.shared.schemas import Problem
from plada.shared.signing import load_or_create_key

log = logging.getLogger("plada.server")
PROBLEM_JSON = "application/problem+json"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 406: "not_acceptable"}


def problem(
    status: int, code: str, title: str, detail: str, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, code=code, errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON)


JSON_BODY_LIMIT = 64 << 10  # reports and every other JSON body: far above any valid one


class BodyLimit:
    """Refuse a request body over its limit before it is spooled to disk: at once when Content-Length says so,
    else as soon as the streamed body passes the limit (413 ``payload_too_large`` either way). The publish
    route (``POST /v1/tasks``) may carry ``limit`` bytes; every other route ``JSON_BODY_LIMIT``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/") == "/v1/tasks"
        limit = self.limit if upload else JSON_BODY_LIMIT
        what = "(PLADA_MAX_UPLOAD_BYTES)" if upload else "(JSON bodies)"
        detail = f"request body exceeds {limit} bytes {what}"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await problem(413, "payload_too_large", "Upload too large", detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise StarletteHTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


def _swagger_static() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def app_from_env() -> FastAPI:
    """The app of one ``plada-server serve --workers N`` process: settings from the ``PLADA_*`` environment."""
    return create_app(Settings())


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings``: own engine, own session factory, pools registered at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert settings.signing_key is not None
        app.state.signing_key = load_or_create_key(settings.signing_key)
        names = register_pools(app.state.session_factory, settings)
        orphans = sweep_orphan_uploads(app.state.session_factory, settings.uploads_dir, settings.orphan_grace_s)
        if orphans:
            log.warning("removed %d orphan upload(s) left by an interrupted publish", len(orphans))
        sweep_finished_uploads(app.state.session_factory, settings.upload_retention_s)
        log.info("plada server %s: database %s, pools %s", __version__, settings.database_url, names or "none")
        yield
        app.state.engine.dispose()

    app = FastAPI(
        title="plada",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Serve new classification tasks as pseudo-labels over a reference pool that "
        "every client already holds. Errors are application/problem+json with a "
        "stable `code`.",
    )
    app.state.settings = settings
    # the multipart envelope and the spec field come on top of the data file itself
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + (1 << 20))
    app.state.publish_limiter = RateLimiter(settings.publish_rate_per_min, 60.0)
    app.state.report_limiter = RateLimiter(settings.report_rate_per_min, 60.0, what="reports")
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads, per_holder=settings.max_uploads_per_token)
    app.state.payload_cache = PayloadBytesCache()
    assert settings.blob_dir is not None
    app.state.blobs = BlobStore(settings.blob_dir)
    app.state.version_views = VersionViews(app.state.blobs)
    app.state.thumbs = ThumbCache(settings.data_dir / "thumbs", settings.thumb_cache_bytes)
    app.state.engine = make_engine(settings.database_url)
    app.state.session_factory = init_db(app.state.engine)
    app.state.metrics = Metrics(app.state.session_factory)
    app.state.hot = HotPath(app.state.session_factory, settings.snapshot_ttl_s, settings.auth == "on")
    app.add_middleware(RequestMetrics, metrics=app.state.metrics, log_requests=settings.log_format == "json")
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)

    app.mount("/static", StaticFiles(directory=_swagger_static()), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="plada API",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.png",
        )

    @app.exception_handler(PladaError)
    async def _plada(_req: Request, exc: PladaError) -> JSONResponse:
        status = exc.status if 400 <= exc.status < 600 else 500
        if status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        resp = problem(status, exc.code, exc.title, exc.message, exc.extra.get("errors"))
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="plada"'
        if "retry_after" in exc.extra:
            resp.headers["Retry-After"] = str(exc.extra["retry_after"])
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errs) or "invalid request"
        return problem(422, "validation_error", "Invalid request", detail, errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return problem(exc.status_code, code, str(exc.detail), str(exc.detail))

    @app.exception_handler(RecursionError)
    async def _too_deep(_req: Request, _exc: RecursionError) -> JSONResponse:
        # only a request body can nest deeply enough (JSON bodies are capped at 64 KiB by BodyLimit)
        return problem(422, "validation_error", "Invalid request", "the JSON body is nested too deeply")

    @app.exception_handler(ClientDisconnect)
    async def _gone(req: Request, _exc: ClientDisconnect) -> Response:
        # a client that hangs up mid-upload is not a server failure: one line, no traceback, nothing to answer
        log.info("client went away during %s %s", req.method, req.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "internal_error", "Internal error", "the server failed; see its log")

    for module in (tasks, versions, payloads, reports, jobs, pools, keys, health):  # one router per resource
        app.include_router(module.router)
    app.include_router(pages_router)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format: requests by route and status with latencies, payload bytes served, the job
        queue, finished jobs and their durations, busy workers' heartbeats (server/metrics.py)."""
        return Response(app.state.metrics.render(), media_type=METRICS_TYPE)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(FAVICON_ICO, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(session: SessionDep) -> HTMLResponse:
        """Pools, tasks, versions, live jobs and accuracy-per-byte plots; self-contained (works offline)."""
        return HTMLResponse(render_dashboard(session, version=__version__), headers={"Cache-Control": "no-cache"})

    return app
