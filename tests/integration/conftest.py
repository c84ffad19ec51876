from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plada.server.local import LocalStack


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory, world_dir: Path) -> Iterator[LocalStack]:
    """A real uvicorn on a free loopback port over a fresh SQLite file; no worker (jobs stay queued)."""
    data = tmp_path_factory.mktemp("api")
    stack = LocalStack(
        data_dir=data,
        pools_dir=world_dir / "pools",
        log_dir=data / "logs",
        env={
            "PLADA_MAX_UPLOAD_BYTES": str(3_000_000),
            "PLADA_MAX_INFLATED_BYTES": str(50_000_000),
            "PLADA_PUBLISH_RATE_PER_MIN": "100000",  # the rate limit has its own stack and test
        },
    )
    stack.start_server()
    yield stack
    stack.stop()
