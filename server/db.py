"""Database models and engine. SQLite (WAL, busy timeout, foreign keys) by default; any SQLAlchemy URL works.

Times are stored as UNIX seconds (floats): lease arithmetic stays simple and identical on every backend.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, sessionmaker


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    pass


class PoolRow(Base):
    __tablename__ = "pools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    pool_id: Mapped[str] = mapped_column(String(64), unique=True)
    n_items: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(4096))
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    pool_ref: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    classes: Mapped[list[str]] = mapped_column(JSON)
    latest_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    access: Mapped[str] = mapped_column(String(16), default="public")  # public | token (reads need a token)
    # who may publish versions and change access: tokens whose owner is this (or admin tokens); NULL for
    # tasks from before ownership existed, which only an admin may publish to until 'task chown'
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("task_ref", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_ref: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    ready_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_ref: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    version_ref: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(2000), default="")
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    data_path: Mapped[str] = mapped_column(String(4096))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class TokenRow(Base):
    """A bearer token, stored as its sha256 only: the database never holds a usable secret."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))  # read | publish | admin
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the team its tasks belong to
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class TaskEventRow(Base):
    """A task's history: who created it, published each version, changed its access or owner, and when."""

    __tablename__ = "task_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_ref: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    at: Mapped[float] = mapped_column(Float, default=now)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))  # created | published | access | owner
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ReportRow(Base):
    """A client's training outcome on one version: what publishers most want to see."""

    __tablename__ = "reports"
    # one report per client and version: a client that reports again replaces its earlier report
    __table_args__ = (Index("uq_reports_version_client", "version_ref", "client_id", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_ref: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    student_arch: Mapped[str] = mapped_column(String(100))
    epochs: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_test: Mapped[int | None] = mapped_column(Integer, nullable=True)
    wall_s: Mapped[float] = mapped_column(Float)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    coverage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the client copy's, if attached
    # who wrote it first ("owner:TEAM" or "token:ID"): only they (or an admin) may replace it
    reporter: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


def make_engine(url: str) -> Engine:
    """Create the engine; for SQLite make the folder, turn on WAL, a busy timeout and foreign keys."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def init_db(engine: Engine) -> sessionmaker[Any]:
    """Migrate the database to the current schema (``plada.server.migrate``), then a session factory."""
    from plada.server.migrate import upgrade

    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)
