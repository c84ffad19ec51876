"""Database migrations (Alembic, scripts in ``server/migrations``): ``plada-server db upgrade``, and at start-up.

Every schema change since the first release is a numbered migration. A database made before migrations
existed (by ``create_all`` at any release) has no ``alembic_version`` table: its revision is read from the
tables and columns it has, stamped, and upgraded from there. Upgrades run under a lock (PostgreSQL: an
advisory lock; SQLite: a lock file beside the database), so a server and workers starting together upgrade
once, one after the other.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine

SCRIPTS = Path(__file__).parent / "migrations"
log = logging.getLogger("plada.migrate")
logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines would precede every CLI answer
_PG_LOCK = 0x706C6164  # "plad"


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    rev = ScriptDirectory(str(SCRIPTS)).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def infer_revision(conn: Connection) -> str | None:
    """The revision of a database made before migrations existed, from what it has; None when empty."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "pools" not in tables:
        return None
    cols = {t: {c["name"]: c for c in insp.get_columns(t)} for t in tables}
    if "coverage" in cols.get("reports", {}):
        return "0007"
    if "task_events" in tables or "owner" in cols.get("tasks", {}):
        return "0006"
    if "tokens" in tables:
        length = getattr(cols["jobs"]["message"]["type"], "length", None)
        return "0005" if length is None or length >= 2000 else "0004"
    if "signature" in cols.get("versions", {}):
        return "0003"
    if "reports" in tables:
        return "0002"
    return "0001"


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK})
            conn.commit()
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK})
                conn.commit()
        return
    db = engine.url.database
    lock_path = Path(f"{db}.migrate.lock") if db and db != ":memory:" else None
    if lock_path is None:
        with engine.connect() as conn:
            yield conn
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the database to ``revision``; returns (revision before, revision after)."""
    with _locked(engine) as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        cfg = _config(conn)
        if before is None:
            inferred = infer_revision(conn)
            if inferred is not None:  # made before migrations: record what it already has
                command.stamp(cfg, inferred)
                conn.commit()
                before = inferred
        command.upgrade(cfg, revision)
        conn.commit()
        after = MigrationContext.configure(conn).get_current_revision()
    assert after is not None
    if before != after:
        log.info("database schema migrated from %s to %s", before or "empty", after)
    return before, after
