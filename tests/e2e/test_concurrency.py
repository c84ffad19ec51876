"""Two workers and the API on one database under load, on SQLite and on PostgreSQL: same test, same asserts.

Readers hammer every read route, download payloads (with and without ETags) and post reports (writes) while
publishers queue jobs and two worker processes race to claim them. Nothing may fail: no 5xx, no transport
error, no "database is locked" in any log, every job claimed once and published.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from harness.local import LocalStack

pytestmark = pytest.mark.slow

N_JOBS = 4
READERS = 3


def _spec(name: str, classes: list[str]) -> str:
    return json.dumps(
        {
            "name": name,
            "classes": classes,
            "pool_id": "mini-v1",
            "keep": 0.005,
            "teacher": {"arch": "probe", "epochs": 5},  # a head on the cached features: seconds per job
            "selector": {"name": "energy", "validate_candidates": False},
        }
    )


def _reader(url: str, read_token: str, stop: threading.Event, out: list[tuple[str, int, float]], seed: int) -> None:
    rng = random.Random(seed)
    etags: dict[str, str] = {}
    auth = {"Authorization": f"Bearer {read_token}"}
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            tasks = [t["name"] for t in c.get("/v1/tasks").json()["data"]]
            routes = ["/v1/tasks", "/v1/jobs", "/v1/jobs?active=true", "/v1/pools", "/"]
            routes += [f"/v1/tasks/{t}/versions" for t in tasks]
            ready = []
            for t in tasks:
                ready += [
                    (t, v["version"]) for v in c.get(f"/v1/tasks/{t}/versions").json()["data"] if v["status"] == "ready"
                ]
            route = rng.choice(routes + [f"/v1/tasks/{t}/versions/{v}/payload" for t, v in ready])
            t0 = time.perf_counter()
            try:
                if route.endswith("/payload") and rng.random() < 0.5 and route in etags:
                    r = c.get(route, headers={"If-None-Match": etags[route]})
                elif ready and rng.random() < 0.2:  # a write: a client report
                    t, v = rng.choice(ready)
                    route = f"/v1/tasks/{t}/versions/{v}/reports"
                    body = {"client_id": f"load-{seed}", "student_arch": "smallcnn", "epochs": 1, "wall_s": 1.0}
                    r = c.post(route, json=body, headers=auth)
                else:
                    r = c.get(route)
                if "etag" in r.headers:
                    etags[route] = r.headers["etag"]
                status = r.status_code
            except httpx.TransportError:
                status = -1
            out.append((route.split("?")[0], status, time.perf_counter() - t0))


@pytest.mark.timeout(900)
def test_two_workers_and_the_api_under_load(
    database_url: str, tmp_path: Path, world_dir: Path, world_features: object, task_classes: dict[str, list[str]]
) -> None:
    env = {  # the readers post reports as fast as the machine lets them; rate limits have their own tests
        "PLADA_WORKER_POLL_S": "0.2",
        "PLADA_PUBLISH_RATE_PER_MIN": "100000",
        "PLADA_REPORT_RATE_PER_MIN": "100000",
    }
    if database_url:
        env["PLADA_DATABASE_URL"] = database_url
    backend = "postgresql" if database_url else "sqlite"
    stack = LocalStack(data_dir=tmp_path / "data", pools_dir=world_dir / "pools", log_dir=tmp_path / "logs", env=env)
    results: list[tuple[str, int, float]] = []
    stop = threading.Event()
    with stack:
        stack.start_server()
        publish = {"Authorization": f"Bearer {stack.token('publish')}"}
        read_token = stack.token("read")
        stack.start_worker()
        stack.start_worker()
        readers = [
            threading.Thread(target=_reader, args=(stack.url, read_token, stop, results, i)) for i in range(READERS)
        ]
        for th in readers:
            th.start()
        data = (world_dir / "tasks" / "digits" / "train.npz").read_bytes()
        job_ids: list[int] = []
        t0 = time.monotonic()
        try:
            for i in range(N_JOBS):  # two tasks, two versions each, queued while the readers run
                r = httpx.post(
                    f"{stack.url}/v1/tasks",
                    data={"spec": _spec(f"load-{i % 2}", task_classes["digits"])},
                    files={"data": ("train.npz", data)},
                    headers=publish,
                    timeout=60,
                )
                assert r.status_code == 202, r.text
                job_ids.append(r.json()["job"]["id"])
            deadline = time.monotonic() + 600
            while True:
                jobs = [httpx.get(f"{stack.url}/v1/jobs/{j}").json() for j in job_ids]
                if all(j["state"] in ("succeeded", "failed") for j in jobs):
                    break
                assert time.monotonic() < deadline, [j["state"] for j in jobs]
                time.sleep(0.5)
            time.sleep(2.0)  # keep reading (and downloading the new payloads) a little longer
        finally:
            stop.set()
            for th in readers:
                th.join(timeout=60)
        wall = time.monotonic() - t0
    assert [j["state"] for j in jobs] == ["succeeded"] * N_JOBS, [j.get("error") for j in jobs]
    assert [j["attempts"] for j in jobs] == [1] * N_JOBS  # no job claimed twice, none lost
    engine = sa.create_engine(database_url or f"sqlite:///{tmp_path / 'data' / 'plada.db'}")
    with engine.connect() as con:
        workers = {w for (w,) in con.execute(sa.text("SELECT worker_id FROM jobs"))}
        numbers = sorted(con.execute(sa.text("SELECT task_ref, number FROM versions")).all())
        n_reports = con.execute(sa.text("SELECT COUNT(*) FROM reports")).scalar_one()
    engine.dispose()
    assert len(workers) == 2, f"one worker did everything: {workers}"
    assert len(numbers) == len(set(numbers)) == N_JOBS
    bad = [(route, status) for route, status, _ in results if status < 0 or status >= 500]
    assert not bad, bad[:10]
    assert all(status in (200, 201, 304) for _, status, _ in results), {s for _, s, _ in results}
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
    assert "database is locked" not in logs and "OperationalError" not in logs and "Traceback" not in logs
    lat = np.array([d for _, _, d in results]) * 1000
    print(
        f"\n{backend}: {len(results)} requests ({n_reports} report writes) in {wall:.1f} s by {READERS} readers "
        f"while 2 workers ran {N_JOBS} jobs; p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
        f"errors 0"
    )
