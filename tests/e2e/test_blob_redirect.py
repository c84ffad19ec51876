"""Payload bytes from a blob host on another origin (``PLADA_BLOB_BASE_URL``, a CDN or bucket in production):
a real server and worker, a real static file server over the shared blob folder, and the client and CLI
following the 307 only where told to, verifying the bytes against what the API itself said."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from quick_specs import two_class_spec

from harness.local import LocalStack, free_port
from plada.client import PladaClient
from plada.shared.errors import VerificationError
from plada.shared.payload import payload_sha256
from plada.shared.pool import Pool


@pytest.fixture()
def blob_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static server (Python's http.server) over ``<data_dir>``: ``<url>/blobs/sha256/..`` are the blobs."""
    data_dir = tmp_path / "d"
    (data_dir / "blobs").mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/", timeout=2)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, "the static server did not start"
            time.sleep(0.1)
    try:
        yield url + "/blobs", data_dir
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_public_payloads_redirect_to_the_blob_host(
    tmp_path: Path, world_dir: Path, pool: Pool, blob_host: tuple[str, Path]
) -> None:
    blob_url, data_dir = blob_host
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), y=np.arange(40) % 2)
    env = {"PLADA_BLOB_BASE_URL": blob_url}
    with LocalStack(data_dir=data_dir, pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        st.start_worker()
        with PladaClient(st.url, token=st.token()) as c:
            jobs = [
                c.publish(two_class_spec(n, a), buf.getvalue(), filename="d.npz").job.id
                for n, a in (("open", "public"), ("closed", "token"))
            ]
            for j in jobs:
                assert c.wait_job(j, timeout=600).state == "succeeded"

        # the API answers a public payload with a 307 carrying what the client verifies against
        for route in ("/v1/tasks/open/payload", "/v1/tasks/open/versions/1/payload"):
            r = httpx.get(st.url + route)
            assert r.status_code == 307 and r.content == b"", (route, r.status_code)
            sha = r.headers["etag"].strip('"')
            assert r.headers["location"] == f"{blob_url}/sha256/{sha[:2]}/{sha}"
            assert r.headers["x-plada-version"] == "1" and r.headers["x-plada-signature"].startswith("ed25519:")
            blob = httpx.get(r.headers["location"])
            assert blob.status_code == 200 and payload_sha256(blob.content) == sha
            assert httpx.get(st.url + route, headers={"If-None-Match": r.headers["etag"]}).status_code == 304

        # a client not told about the blob host refuses to go there; told, it follows and verifies
        with PladaClient(st.url, cache_dir=tmp_path / "c1") as c, pytest.raises(VerificationError, match="refused"):
            c.fetch("open", pool=pool)
        with PladaClient(st.url, cache_dir=tmp_path / "c2", blob_base_url=blob_url) as c:
            p = c.fetch("open", pool=pool)
            assert p.version == 1 and p.task == "open" and c.cache.get(sha) is not None
            assert c.fetch("open", pool=pool).sha256 == p.sha256  # the second time: a 304, nothing downloaded

        # token-gated payloads never go to the blob host: the API checks access and sends the bytes
        read = {"Authorization": f"Bearer {st.token('read')}"}
        g = httpx.get(st.url + "/v1/tasks/closed/payload", headers=read)
        assert g.status_code == 200 and "location" not in g.headers
        assert g.headers["etag"] == f'"{payload_sha256(g.content)}"'
        assert httpx.get(st.url + "/v1/tasks/closed/payload").status_code == 404

        # the CLI: --blob-url (or $PLADA_BLOB_BASE_URL) and the same checks, with the server's key pinned
        env_cli = dict(os.environ) | {"PLADA_CACHE": str(tmp_path / "c3")}
        env_cli.pop("PLADA_BLOB_BASE_URL", None)
        pull = [sys.executable, "-m", "plada.client.cli", "pull", "--server", st.url, "--task", "open"]
        pull += ["--pool", str(pool.root), "--out", str(tmp_path / "open.plada")]
        refused = subprocess.run(pull, env=env_cli, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "refused" in refused.stderr
        assert not (tmp_path / "open.plada").exists()
        ok = subprocess.run([*pull, "--blob-url", blob_url], env=env_cli, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert payload_sha256((tmp_path / "open.plada").read_bytes()) == sha
