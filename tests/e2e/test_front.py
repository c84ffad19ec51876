"""The shipped nginx front (deploy/nginx-plada.conf.template, Debian's nginx on a loopback port) before a real
server and worker: payload bytes come from the shared blob folder via X-Accel-Redirect, access is still
checked in Python, and the client verifies what it gets through the front (sha256, task, version, pool)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from quick_specs import two_class_spec

from harness.local import LocalStack, NginxFront, nginx_binary
from plada.client import PladaClient
from plada.shared.errors import ServerResponseError
from plada.shared.payload import payload_sha256
from plada.shared.pool import Pool

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="needs nginx (Debian: apt-get install nginx-light)")


def test_payloads_through_the_front(tmp_path: Path, world_dir: Path, pool: Pool) -> None:
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), y=np.arange(40) % 2)
    env = {"PLADA_ACCEL_REDIRECT": "/_blobs/"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        st.start_worker()
        front = NginxFront(tmp_path / "nginx", st.url.removeprefix("http://"), st.data_dir / "blobs")
        try:
            url = front.start()
            with PladaClient(url, token=st.token()) as c:  # publishing goes through the front too
                jobs = [
                    c.publish(two_class_spec(n, a), buf.getvalue(), filename="d.npz").job.id
                    for n, a in (("open", "public"), ("closed", "token"))
                ]
                for j in jobs:
                    assert c.wait_job(j, timeout=600).state == "succeeded"
            # public: bytes from nginx, headers from the API, verified by the client
            r = httpx.get(f"{url}/v1/tasks/open/versions/1/payload")
            assert r.status_code == 200, r.text
            assert r.headers["etag"] == f'"{payload_sha256(r.content)}"'
            assert r.headers["x-plada-version"] == "1" and r.headers["x-plada-task"] == "open"
            assert r.headers["x-plada-signature"].startswith("ed25519:")
            assert "public" in r.headers["cache-control"] and "immutable" in r.headers["cache-control"]
            assert r.headers["content-type"] == "application/vnd.plada.payload"
            assert "x-accel-redirect" not in r.headers
            again = httpx.get(f"{url}/v1/tasks/open/versions/1/payload")  # now from nginx's cache, not Python
            assert again.headers["x-cache"] == "HIT" and again.content == r.content
            assert again.headers["etag"] == r.headers["etag"] and again.headers["x-plada-version"] == "1"
            assert (
                httpx.get(
                    f"{url}/v1/tasks/open/versions/1/payload", headers={"If-None-Match": r.headers["etag"]}
                ).status_code
                == 304
            )
            with PladaClient(url) as c:
                assert c.fetch("open", pool=pool).version == 1
            # the API alone (no front) only points at the blob: clients must use the front
            direct = httpx.get(f"{st.url}/v1/tasks/open/payload")
            assert direct.content == b"" and direct.headers["x-accel-redirect"].startswith("/_blobs/sha256/")
            # the blob location itself is internal
            assert httpx.get(url + direct.headers["x-accel-redirect"]).status_code == 404
            # token-gated: checked in Python, bytes from nginx, never cacheable by a shared cache
            assert httpx.get(f"{url}/v1/tasks/closed/payload").status_code == 404
            g = httpx.get(f"{url}/v1/tasks/closed/payload", headers={"Authorization": f"Bearer {st.token('read')}"})
            assert g.status_code == 200 and g.headers["etag"] == f'"{payload_sha256(g.content)}"'
            assert g.headers["cache-control"].startswith("no-cache")
            read = {"Authorization": f"Bearer {st.token('read')}"}
            for _ in range(2):  # never stored by the front: every answer comes from the API's access check
                v = httpx.get(f"{url}/v1/tasks/closed/versions/1/payload", headers=read)
                assert v.status_code == 200 and v.headers["cache-control"].startswith("private")
                assert v.headers.get("x-cache") != "HIT"
            assert httpx.get(f"{url}/v1/tasks/closed/versions/1/payload").status_code == 404
            with PladaClient(url, token=st.token("read")) as c:
                assert c.fetch("closed", pool=pool).version == 1
            with PladaClient(url) as c, pytest.raises(ServerResponseError, match="404"):
                c.fetch("closed", pool=pool)
        finally:
            front.stop()
            time.sleep(0.1)


def test_the_front_keeps_the_apis_promises(tmp_path: Path, world_dir: Path) -> None:
    """Polls through the front: a conditional GET is a 304 with no body (nginx used to drop If-None-Match when
    caching and send the full payload); a long-poll is held; a task gated after being public stops being
    served by the front's cache (PLADA_FRONT_CACHE_S); /metrics is not served to the outside."""
    import io

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), y=np.arange(40) % 2)
    env = {"PLADA_ACCEL_REDIRECT": "/_blobs/", "PLADA_FRONT_CACHE_S": "1"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        st.start_worker()
        front = NginxFront(tmp_path / "nginx", st.url.removeprefix("http://"), st.data_dir / "blobs")
        try:
            url = front.start()
            with PladaClient(url, token=st.token()) as c:
                assert c.wait_job(c.publish(two_class_spec("poll"), buf.getvalue(), filename="d.npz").job.id).state == (
                    "succeeded"
                )
            first = httpx.get(f"{url}/v1/tasks/poll/payload")
            assert first.status_code == 200 and first.content
            etag = {"If-None-Match": first.headers["etag"]}
            for path in ("payload", "versions/1/payload"):
                for _ in range(5):  # each poll: 304 and never a body
                    r = httpx.get(f"{url}/v1/tasks/poll/{path}", headers=etag)
                    assert r.status_code == 304 and r.content == b"", (path, r.status_code, len(r.content))
            t0 = time.monotonic()
            held = httpx.get(f"{url}/v1/tasks/poll/payload", params={"wait": 3}, headers=etag, timeout=30)
            assert held.status_code == 304 and time.monotonic() - t0 >= 2.5  # held, not answered from a cache
            assert httpx.get(f"{url}/v1/tasks/poll/versions/1/payload").status_code == 200
            assert httpx.get(f"{url}/v1/tasks/poll/versions/1/payload").headers["x-cache"] == "HIT"
            # the owner gates the task: within PLADA_FRONT_CACHE_S the front no longer serves its old versions
            with PladaClient(url, token=st.token()) as c:
                spec = two_class_spec("poll", access="token")
                assert c.wait_job(c.publish(spec, buf.getvalue(), filename="d.npz").job.id).state == "succeeded"
            time.sleep(1.5)
            for v in (1, 2):
                assert httpx.get(f"{url}/v1/tasks/poll/versions/{v}/payload").status_code == 404
            read = {"Authorization": f"Bearer {st.token('read')}"}
            assert httpx.get(f"{url}/v1/tasks/poll/versions/1/payload", headers=read).status_code == 200
            # metrics are scraped from inside, never through the front
            assert httpx.get(f"{url}/metrics").status_code == 404
            assert httpx.get(f"{st.url}/metrics").status_code == 200
        finally:
            front.stop()
            time.sleep(0.1)


def _trickle(url: str, token: str, results: list[tuple[str, float]], stop_after: float = 25.0) -> None:
    """A publish whose body arrives 10 bytes every 0.3 s (as a hostile sender would), through the front."""
    import select
    import socket

    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        head = (
            f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'--xyz\r\nContent-Disposition: form-data; name="data"; filename="d.npz"\r\n\r\n')
        answer = b""
        while time.monotonic() - t0 < stop_after:
            ready, _, _ = select.select([sock], [], [], 0.3)
            if ready:
                answer = sock.recv(4096)
                break
            try:
                sock.sendall(b"x" * 10)
            except OSError:
                break
        results.append((answer.split(b"\r\n", 1)[0].decode(errors="replace"), time.monotonic() - t0))


def test_one_publisher_cannot_hold_every_upload_slot(tmp_path: Path, world_dir: Path) -> None:
    """Four bodies trickled by one token: two get a slot (PLADA_MAX_UPLOADS_PER_TOKEN), two wait for one of
    that token's; another owner's publish goes through meanwhile; trickling bodies are cut at
    PLADA_UPLOAD_DEADLINE_S (408), and the waiting two then get their turn (and are cut too), through the
    shipped front."""
    import io
    import threading

    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), y=np.arange(40) % 2)
    env = {"PLADA_ACCEL_REDIRECT": "/_blobs/", "PLADA_UPLOAD_DEADLINE_S": "8"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        front = NginxFront(tmp_path / "nginx", st.url.removeprefix("http://"), st.data_dir / "blobs")
        try:
            url = front.start()
            hoarder = st.token("publish", "team-a")
            results: list[tuple[str, float]] = []
            threads = [threading.Thread(target=_trickle, args=(url, hoarder, results)) for _ in range(4)]
            for t in threads:
                t.start()
                time.sleep(0.2)
            t0 = time.monotonic()
            with PladaClient(url, token=st.token("publish", "team-b")) as c:
                resp = c.publish(two_class_spec("other-team"), buf.getvalue(), filename="d.npz")
            assert resp.version == 1 and time.monotonic() - t0 < 7  # no wait for a slot (that is 10 s, then 429)
            for t in threads:
                t.join(timeout=30)
            assert len(results) == 4, results
            first, later = sorted(results, key=lambda r: r[1])[:2], sorted(results, key=lambda r: r[1])[2:]
            assert all(" 408 " in line and 7.5 < t < 13 for line, t in first), results  # cut at the deadline
            # the two that waited for their token's slot: cut in their turn, or 429 if the wait ran out first
            assert all((" 408 " in line and t > 14) or " 429 " in line for line, t in later), results
        finally:
            front.stop()
            time.sleep(0.1)
