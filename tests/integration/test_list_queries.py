"""A list of jobs costs a fixed number of queries, not two per job (the view names each job's task and
version): the API's job list, the dashboard and `plada-server job list` format pages this way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sqlalchemy as sa

from plada.server import repo
from plada.server.api.views import job_info
from plada.server.auth import LOCAL
from plada.server.db import init_db, make_engine
from plada.shared.pool import write_array_pool
from plada.shared.schemas import TaskSpec


def test_a_page_of_jobs_is_three_queries(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    factory = init_db(engine)
    pool = write_array_pool(tmp_path / "pool", "tiny", np.zeros((20, 8, 8), np.uint8), [f"k{i}" for i in range(20)])
    with factory.begin() as s:
        prow = repo.register_pool(session=s, pool=pool)
        for t in range(8):
            spec = TaskSpec(name=f"t{t}", classes=["a", "b"], pool_id="tiny", keep=0.5)
            for _ in range(2):
                repo.create_publication(
                    session=s, spec=spec, pool=prow, data_path=tmp_path / "x.npz", max_attempts=3, caller=LOCAL
                )
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with factory() as s:
        rows = repo.list_jobs(session=s, limit=50)
        ctx = repo.job_contexts(session=s, jobs=rows)
        infos = [job_info(s, r, ctx[r.id]) for r in rows]
        listed = len(statements)
        one_by_one = [job_info(s, r) for r in rows]  # the single-job path gives the same answers
    assert len(infos) == 16 and {(i.task, i.version) for i in infos} == {(f"t{t}", v) for t in range(8) for v in (1, 2)}
    assert infos == one_by_one
    assert listed == 2, statements[:listed]  # the page and its joined context (one by one it was 1 + 2 per job)


def _world(tmp_path: Path, n_tasks: int) -> tuple[sa.Engine, object]:
    engine = make_engine(f"sqlite:///{tmp_path / f'w{n_tasks}.db'}")
    factory = init_db(engine)
    with factory.begin() as s:
        pools = []
        for fill, name in enumerate(("tiny", "other")):  # different images: different pool ids
            pool = write_array_pool(
                tmp_path / f"{name}{n_tasks}", name, np.full((20, 8, 8), fill, np.uint8), [f"k{i}" for i in range(20)]
            )
            pools.append(repo.register_pool(session=s, pool=pool))
        for t in range(n_tasks):
            prow = pools[t % 2]
            spec = TaskSpec(name=f"t{t}", classes=["a", "b"], pool_id=prow.name, keep=0.5)
            for _ in range(2):
                repo.create_publication(
                    session=s, spec=spec, pool=prow, data_path=tmp_path / "x.npz", max_attempts=3, caller=LOCAL
                )
    return engine, factory


def test_task_lists_and_the_dashboard_cost_the_same_for_two_tasks_or_twelve(tmp_path: Path) -> None:
    """The task list joins each task's pool in; the dashboard reads every task's versions, report summaries
    and plotted reports in one query each: the number of statements does not grow with the tasks."""
    from plada.server.api.views import task_info
    from plada.server.dashboard import render_dashboard

    counts = {}
    for n in (2, 12):
        engine, factory = _world(tmp_path, n)
        statements: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a, st=statements: st.append(a[2]))
        with factory() as s:  # type: ignore[operator]
            infos = [task_info(s, t, p) for t, p in repo.tasks_with_pools(session=s)]
            listed = len(statements)
            page = render_dashboard(s, version="test")
        assert [i.pool_name for i in infos] == [("tiny", "other")[int(i.name[1:]) % 2] for i in infos]
        assert listed == 1 and all(f"t{t}" in page for t in range(n))
        counts[n] = len(statements) - listed
        engine.dispose()
    assert counts[2] == counts[12], counts
