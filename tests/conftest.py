"""Shared fixtures: the real mini world (built once into the cache), and a running server + worker stack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.local import LocalPostgres
from plada.shared.datasets.mini import build_mini_world, default_world_dir
from plada.shared.pool import Pool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_client_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets a fresh client cache and starts online: nothing leaks into ~/.cache/plada."""
    monkeypatch.setenv("PLADA_CACHE", str(tmp_path_factory.mktemp("client-cache")))
    monkeypatch.delenv("PLADA_OFFLINE", raising=False)


@pytest.fixture(scope="session")
def world_dir() -> Path:
    d = default_world_dir()
    build_mini_world(d, log=lambda _m: None)
    return d


@pytest.fixture(scope="session")
def pool(world_dir: Path) -> Pool:
    from plada.shared.pool import open_pool

    return open_pool(world_dir / "pools" / "mini-v1")


@pytest.fixture(scope="session")
def world_features(pool: Pool) -> Pool:
    """The mini pool with its cached feature index (what ``make world`` builds; built here when missing)."""
    from plada.server.pipeline.features import build_feature_index, open_feature_index

    if open_feature_index(pool) is None:
        build_feature_index(pool)
    return pool


@pytest.fixture(scope="session")
def task_classes(world_dir: Path) -> dict[str, list[str]]:
    return {
        t: json.loads((world_dir / "tasks" / t / "task.json").read_text())["classes"]
        for t in ("fashion", "animals", "digits")
    }


@pytest.fixture()
def small_npz(tmp_path: Path) -> Iterator[Path]:
    """A tiny valid upload: 2 classes × 6 random 28×28 images."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(path, x=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8), y=np.repeat([0, 1], 6))
    yield path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL cluster on a free loopback port, shared by every test of the session."""
    pg = LocalPostgres.find()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it as root)")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Run a test once on SQLite (empty string: the server's default file) and once on PostgreSQL."""
    if request.param == "sqlite":
        return ""
    pg: LocalPostgres = request.getfixturevalue("postgres_server")
    return pg.new_database()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the artifacts tests left (e.g. the dashboard screenshots) at the end of the run, so CI shows them."""
    folder = REPO / "test-artifacts"
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            terminalreporter.write_line(f"test artifact: {path} ({path.stat().st_size:,} bytes)")
