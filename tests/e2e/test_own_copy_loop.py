"""A client's own, imperfect copy of the pool, end to end with real parts: the server serves the signed pool
definition (ETag, 304), ``plada-client pool attach`` maps a re-encoded copy with files missing onto it, and
``train``/the agent train on what the copy holds, refuse below ``--min-coverage``, and report the coverage the
version page shows."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from own_copy_world import SOURCES, write_tiny_pool

from harness import copies
from harness.local import LocalStack
from plada.client import PladaClient
from plada.shared.pool import Pool
from plada.shared.signing import DEFINITION_DOMAIN, PublicKey

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory: pytest.TempPathFactory, pool: Pool) -> Iterator[tuple[LocalStack, Path, Pool]]:
    root = tmp_path_factory.mktemp("owncopy")
    images, tiny = write_tiny_pool(pool, root, per_source=80)
    stack = LocalStack(data_dir=root / "server", pools_dir=root / "pools", log_dir=root / "logs")
    stack.start_server()
    stack.start_worker()
    yield stack, images, tiny
    stack.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plada.client.cli", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


def _upload(mini: Pool) -> bytes:
    """Which source a picture comes from: other items of the same three sources than the pool holds."""
    idx = np.concatenate([np.arange(s + 500, s + 540) for s in SOURCES.values()])
    buf = io.BytesIO()
    np.savez(buf, x=mini.batch(idx)[..., 0], y=np.repeat([0, 1, 2], 40))
    return buf.getvalue()


def test_an_imperfect_copy_attaches_trains_and_reports_its_coverage(
    tiny_stack: tuple[LocalStack, Path, Pool], pool: Pool, tmp_path: Path
) -> None:
    stack, images, tiny = tiny_stack
    url = stack.url
    # the definition: served, signed under its own domain, cached by ETag
    r = httpx.get(f"{url}/v1/pools/tiny-v1/definition")
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.plada.pool-definition"
    sha = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{sha}"' and r.headers["x-plada-pool-id"] == tiny.pool_id
    key = PublicKey.parse(httpx.get(f"{url}/v1/signing-key").json()["public_key"])
    key.verify(sha, r.headers["x-plada-signature"], domain=DEFINITION_DOMAIN, what="pool definition")
    again = httpx.get(f"{url}/v1/pools/tiny-v1/definition", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{url}/v1/pools/nope/definition").json()["code"] == "unknown_pool"

    spec = {
        "name": "source",
        "classes": ["fashion", "animals", "digits"],
        "pool_id": "tiny-v1",
        "keep": 0.5,
        "teacher": {"epochs": 4},
        "selector": {"name": "energy", "validate_candidates": False},
    }
    with PladaClient(url, token=stack.token()) as c:
        job = c.publish(spec, _upload(pool), filename="d.npz").job.id
        assert c.wait_job(job, timeout=600).state == "succeeded"

    # the client's copy: every file re-encoded as JPEG, then 5 % of them lost
    copies.reencode_jpeg(images, tmp_path / "jpeg")
    gone = copies.delete_fraction(tmp_path / "jpeg", tmp_path / "copy", 0.05, seed=3)
    att = tmp_path / "attached"
    trust = key.text
    out = cli(
        "pool",
        "attach",
        "--server",
        url,
        "--pool",
        "tiny-v1",
        "--trust",
        trust,
        "--out",
        str(att),
        str(tmp_path / "copy"),
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert (rep["matched"], rep["missing"], rep["extra"]) == (240 - len(gone), len(gone), 0)
    assert rep["rules"] == {"exact": 240 - len(gone)} and rep["definition_sha256"] == sha

    # the offline form: the definition (and its signature) as files, attached without a server
    out = cli("pool", "definition", "--server", url, "--pool", "tiny-v1", "--out", str(tmp_path / "tiny.pooldef"))
    assert out.returncode == 0 and json.loads(out.stdout)["sha256"] == sha, out.stderr
    off = cli(
        "pool",
        "attach",
        "--definition",
        str(tmp_path / "tiny.pooldef"),
        "--pool",
        "tiny-v1",
        "--trust",
        trust,
        "--out",
        str(tmp_path / "offline"),
        str(tmp_path / "copy"),
    )
    assert off.returncode == 0 and json.loads(off.stdout)["matched"] == rep["matched"], off.stderr
    (tmp_path / "tiny.pooldef.sig").write_text(r.headers["x-plada-signature"].replace("ed25519:", "ed25519:0", 1))
    bad = cli(
        "pool",
        "attach",
        "--definition",
        str(tmp_path / "tiny.pooldef"),
        "--pool",
        "tiny-v1",
        "--trust",
        trust,
        "--out",
        str(tmp_path / "refused-att"),
        str(tmp_path / "copy"),
    )
    assert bad.returncode == 1 and "signature_invalid" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (tmp_path / "refused-att").exists()

    # pull and train from the server on the attached copy: coverage in the metrics, missing items named
    out = cli("pull", "--server", url, "--task", "source", "--pool", str(att), "--out", str(tmp_path / "s.plada"))
    assert out.returncode == 0 and json.loads(out.stdout)["pool_id"] == tiny.pool_id, out.stderr
    run = tmp_path / "run"
    args = ["train", "--server", url, "--task", "source", "--pool", str(att), "--out", str(run), "--epochs", "2"]
    out = cli(*args, "--trust", trust)
    assert out.returncode == 0, out.stderr
    cov = json.loads(out.stdout)["coverage"]
    assert cov["exact"] == 0 and cov["different"] == 0 and cov["reencoded"] == cov["used"]
    assert cov["missing"] >= 1 and cov["used"] + cov["missing"] == cov["total"]
    assert set(cov["first_missing"]) <= set(gone)
    # below the threshold: one line, exit 1, no run folder written
    out = cli(*args[:-4], "--out", str(tmp_path / "refused"), "--min-coverage", "1")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "coverage_too_low" in out.stderr and "missing (first: " in out.stderr
    assert not (tmp_path / "refused" / "metrics.json").exists()

    # the agent reports the coverage; the version page shows it
    token = stack.token(scope="read")
    out = cli(
        "agent",
        "--server",
        url,
        "--task",
        "source",
        "--pool",
        str(att),
        "--out",
        str(tmp_path / "agent"),
        "--once",
        "--epochs",
        "1",
        "--token",
        token,
        "--client-id",
        "copy-box",
    )
    assert out.returncode == 0, out.stderr
    with PladaClient(url) as c:
        (report,) = c.reports("source", 1)
    assert report.coverage is not None and report.coverage.missing == cov["missing"]
    assert report.coverage.reencoded == cov["reencoded"]
    page = httpx.get(f"{url}/tasks/source/versions/1").text
    assert f"{cov['used']:,}/{cov['total']:,} used" in page and f"missing {cov['missing']:,}" in page
