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
