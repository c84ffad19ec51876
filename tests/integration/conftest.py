from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.local import LocalStack


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, world_dir: Path
) -> Iterator[LocalStack]:
    """A real uvicorn on a free loopback port over a fresh database, SQLite file or PostgreSQL (the same
    tests run on both); no worker (jobs stay queued)."""
    data = tmp_path_factory.mktemp("api")
    db = {}
    if request.param == "postgresql":
        db = {"PLADA_DATABASE_URL": request.getfixturevalue("postgres_server").new_database()}
    stack = LocalStack(
        data_dir=data,
        pools_dir=world_dir / "pools",
        log_dir=data / "logs",
        env={
            "PLADA_MAX_UPLOAD_BYTES": str(3_000_000),
            "PLADA_MAX_INFLATED_BYTES": str(50_000_000),
            "PLADA_PUBLISH_RATE_PER_MIN": "100000",  # the rate limit has its own stack and test
            "PLADA_REPORT_RATE_PER_MIN": "100000",
            "PLADA_SNAPSHOT_TTL_S": "0",  # exact read-after-write here; the snapshots have their own test
        }
        | db,
    )
    stack.start_server()
    yield stack
    stack.stop()
