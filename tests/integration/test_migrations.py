"""Schema migrations: a database of the first release (fixture: schema_v0.py) is filled, upgraded by today's
server at start-up and served — on SQLite and on PostgreSQL; the migrated schema equals today's models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import schema_v0 as v0
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from harness.local import LocalStack
from plada.client import PladaClient
from plada.server import migrate
from plada.server.db import Base, make_engine
from plada.shared.payload import Payload, encode_payload, payload_sha256
from plada.shared.pool import Pool


def _old_database(url: str, pool: Pool) -> bytes:
    """The first release's tables, filled as that release would have: a pool, a task, a ready version with its
    payload, its finished job. Returns the payload bytes."""
    data = encode_payload(
        Payload(
            indices=np.arange(0, 700, 7),
            labels=np.arange(100) % 2,
            classes=("a", "b"),
            pool_id=pool.pool_id,
            n_pool=len(pool),
            task="old-task",
            version=1,
            pool_name=pool.name,
        )
    )
    engine = make_engine(url)
    v0.Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        p = v0.PoolRow(name=pool.name, pool_id=pool.pool_id, n_items=len(pool), path=str(pool.root), info={})
        s.add(p)
        s.flush()
        t = v0.TaskRow(name="old-task", pool_ref=p.id, classes=["a", "b"], latest_version=1)
        s.add(t)
        s.flush()
        v = v0.VersionRow(
            task_ref=t.id,
            number=1,
            status="ready",
            spec={"name": "old-task"},
            sha256=payload_sha256(data),
            size_bytes=len(data),
            n_items=100,
            payload=data,
            metrics={},
        )
        s.add(v)
        s.flush()
        s.add(v0.JobRow(task_ref=t.id, version_ref=v.id, state="succeeded", progress=1.0, data_path="/gone.npz"))
    engine.dispose()
    return data


def test_a_first_release_database_is_upgraded_and_served(
    database_url: str, tmp_path: Path, world_dir: Path, pool: Pool
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = database_url or f"sqlite:///{data_dir / 'plada.db'}"
    payload = _old_database(url, pool)
    env = {"PLADA_DATABASE_URL": url} if database_url else {}
    with LocalStack(data_dir=data_dir, pools_dir=world_dir / "pools", log_dir=tmp_path / "logs", env=env) as st:
        st.start_server()  # migrates at start-up
        engine = make_engine(url)
        assert migrate.current(engine) == migrate.head()
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        engine.dispose()
        task = httpx.get(f"{st.url}/v1/tasks/old-task").json()
        assert task["access"] == "public" and task["latest_version"] == 1
        r = httpx.get(f"{st.url}/v1/tasks/old-task/versions/1/payload")
        assert r.status_code == 200 and r.content == payload
        with PladaClient(st.url) as c:
            got = c.fetch("old-task", pool=pool)
            assert got.version == 1 and len(got) == 100
        # an ownerless task from before owners: an admin publishes the next version
        spec = {"name": "old-task", "classes": ["a", "b"], "pool_id": "mini-v1", "teacher": {"epochs": 1}}
        rng = np.random.default_rng(0)
        import io

        buf = io.BytesIO()
        np.savez(buf, x=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8), y=np.repeat([0, 1], 6))
        resp = httpx.post(
            f"{st.url}/v1/tasks",
            data={"spec": json.dumps(spec)},
            files={"data": ("d.npz", buf.getvalue())},
            headers={"Authorization": f"Bearer {st.token('admin', 'ops')}"},
            timeout=60,
        )
        assert resp.status_code == 202 and resp.json()["version"] == 2
        out = subprocess.run(
            [sys.executable, "-m", "plada.server.cli", "--json", "db", "current"],
            env=st._env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and json.loads(out.stdout) == {"current": migrate.head(), "head": migrate.head()}


def test_every_revision_upgrades_an_empty_database_to_todays_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    steps = ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    assert steps[-1] == migrate.head()
    for i, rev in enumerate(steps):
        before, after = migrate.upgrade(engine, rev)
        assert (before, after) == (steps[i - 1] if i else None, rev)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # idempotent


@pytest.mark.parametrize("stop", ["0001", "0002", "0003", "0004", "0006", "0007"])
def test_the_revision_of_a_database_without_migrations_is_inferred(tmp_path: Path, stop: str) -> None:
    """Databases made by create_all at each release (no alembic_version): inferred, stamped, upgraded."""
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(engine, stop)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with engine.connect() as conn:
        inferred = migrate.infer_revision(conn)
    # SQLite cannot tell 0004 from 0005 (lengths are not kept): either is safe, 0005 only widens a column
    assert inferred == stop or (stop == "0004" and inferred == "0005")
    assert migrate.upgrade(engine)[1] == migrate.head()
