"""Dependency aliases shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session, sessionmaker

from plada.server import repo
from plada.server.auth import Caller, authenticate, may_see
from plada.server.db import TaskRow
from plada.server.settings import Settings
from plada.shared.errors import TaskNotFoundError


def _session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as s:
        yield s


def _factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _caller(request: Request, session: Annotated[Session, Depends(_session)]) -> Caller:
    settings: Settings = request.app.state.settings
    return authenticate(
        session=session, authorization=request.headers.get("Authorization"), enabled=settings.auth == "on"
    )


SessionDep = Annotated[Session, Depends(_session)]
CallerDep = Annotated[Caller, Depends(_caller)]
FactoryDep = Annotated[sessionmaker[Session], Depends(_factory)]
SettingsDep = Annotated[Settings, Depends(_settings)]


# Path ids are bounded so a giant number is a 422, not an integer overflow inside the database (a 500).
MAX_ID = 2**31 - 1
VersionNumber = Annotated[int, Path(ge=1, le=MAX_ID, description="version number (1, 2, …)")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]


def readable_task(session: Session, name: str, caller: Caller) -> TaskRow:
    """The task, if this caller may see it (auth.may_see): a token-gated task is a 404 to anyone without a
    token, so its name does not leak."""
    t = repo.get_task(session=session, name=name)
    if not may_see(t.access, caller):
        raise TaskNotFoundError(f"no task named {name!r}")
    return t
