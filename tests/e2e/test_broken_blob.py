"""A damaged payload blob on the server: the evidence is kept, the version is marked broken, ``latest`` skips
it, and the dashboard and /metrics say so (it used to be deleted on first read, leaving a version that
answered 409 "payload missing" for ever while ``latest`` still pointed at it)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from quick_specs import two_class_spec

from harness.local import LocalStack
from plada.client import PladaClient
from plada.shared.pool import Pool

pytestmark = pytest.mark.slow


def test_a_damaged_blob_breaks_its_version_and_latest_moves_back(tmp_path: Path, world_dir: Path, pool: Pool) -> None:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), y=np.arange(40) % 2)
    env = {"PLADA_SNAPSHOT_TTL_S": "0.2"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        st.start_worker()
        with PladaClient(st.url, token=st.token()) as c:
            for _ in range(2):
                assert c.wait_job(
                    c.publish(two_class_spec("fragile"), buf.getvalue(), filename="d.npz").job.id
                ).state == ("succeeded")
            sha2 = c.version("fragile", 2).sha256
        assert sha2 is not None
        blob = st.data_dir / "blobs" / "sha256" / sha2[:2] / sha2
        blob.write_bytes(blob.read_bytes()[:-7] + b"damaged")
        r = httpx.get(f"{st.url}/v1/tasks/fragile/payload")
        assert r.status_code == 409 and "version 2 of 'fragile' is broken" in r.json()["detail"]
        assert "latest is now version 1" in r.json()["detail"]
        kept = list((st.data_dir / "blobs" / "quarantine").iterdir())
        assert [p.name.split(".")[0] for p in kept] == [sha2] and kept[0].read_bytes().endswith(b"damaged")
        time.sleep(0.5)  # past the snapshot TTL
        latest = httpx.get(f"{st.url}/v1/tasks/fragile/payload")
        assert latest.status_code == 200 and latest.headers["x-plada-version"] == "1"
        assert httpx.get(f"{st.url}/v1/tasks/fragile/versions/2/payload").status_code == 409
        assert httpx.get(f"{st.url}/v1/tasks/fragile/versions/2").json()["status"] == "broken"
        assert 'plada_versions{status="broken"} 1.0' in httpx.get(f"{st.url}/metrics").text
        assert "plada_versions_marked_broken_total 1.0" in httpx.get(f"{st.url}/metrics").text
        assert ">broken</strong>" in httpx.get(f"{st.url}/").text
        with PladaClient(st.url) as c:
            assert c.fetch("fragile", pool=pool).version == 1  # an agent keeps working on the version still whole
