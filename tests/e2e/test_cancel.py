"""Cancelling a running job: a real worker stops at its next progress point, publishes nothing, and takes the
next job. (Queued jobs: tests/integration/test_trust.py.)"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np

from harness.local import LocalStack
from plada.client import PladaClient


def _npz(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), y=np.arange(n) % 2)
    return buf.getvalue()


def test_a_running_job_stops_when_cancelled_and_the_worker_goes_on(tmp_path: Path, world_dir: Path) -> None:
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "logs") as st:
        st.start_server()
        st.start_worker()
        token = st.token()
        long = {
            "name": "long",
            "classes": ["a", "b"],
            "pool_id": "mini-v1",
            "keep": 0.01,
            "teacher": {"arch": "smallcnn", "epochs": 300},
            "selector": {"name": "energy", "validate_candidates": False},
        }
        with PladaClient(st.url, token=token) as c:
            job = c.publish(long, _npz(400, 0), filename="d.npz").job.id
            deadline = time.monotonic() + 120
            while (info := c.job(job)).state != "running" or info.progress <= 0:
                assert time.monotonic() < deadline, info
                time.sleep(0.2)
            assert c.cancel_job(job).state == "cancelled"
            time.sleep(5)  # several heartbeats: the worker must have noticed by now, and must not undo it
            info = c.job(job)
            assert info.state == "cancelled" and info.error is not None and info.error.code == "job_cancelled"
            v = c.version("long", 1)
            assert v.status == "cancelled" and v.sha256 is None
            assert httpx.get(f"{st.url}/v1/tasks/long/versions/1/payload").status_code == 409
            quick = long | {"name": "quick", "teacher": {"arch": "smallcnn", "epochs": 1}}
            nxt = c.publish(quick, _npz(40, 1), filename="d.npz").job.id
            assert c.wait_job(nxt, timeout=300).state == "succeeded"  # the same worker took the next job
        log = (tmp_path / "logs" / "worker0.log").read_text()
        assert "cancelled (or lease lost) while running" in log
