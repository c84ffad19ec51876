"""The whole loop with real parts: uvicorn + SQLite + worker processes, httpx, the CLIs, torch training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.local import LocalStack
from plada.client import Agent, AgentConfig, PladaClient, TrainConfig
from plada.shared.errors import PayloadNeedsPoolError
from plada.shared.payload import decode_payload
from plada.shared.pool import Pool, write_array_pool
from plada.shared.schemas import TaskSpec

pytestmark = pytest.mark.slow
LEASE_S = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, world_dir: Path) -> Iterator[LocalStack]:
    data = tmp_path_factory.mktemp("e2e")
    s = LocalStack(
        data_dir=data,
        pools_dir=world_dir / "pools",
        log_dir=data / "logs",
        env={"PLADA_JOB_LEASE_S": str(LEASE_S), "PLADA_WORKER_POLL_S": "0.2"},
    )
    s.start_server()
    s.start_worker()
    yield s
    s.stop()


def digits_spec(classes: list[str], **kw: object) -> TaskSpec:
    # the default selector: auto, i.e. the worker validates every candidate with a proxy student
    base = {"name": "digits", "classes": classes, "pool_id": "mini-v1", "keep": 0.05, "teacher": {"epochs": 8}}
    return TaskSpec.model_validate(base | kw)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plada.client.cli", "--json", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def published(stack: LocalStack, world_dir: Path, task_classes: dict[str, list[str]]) -> dict[str, object]:
    """Publish `digits` once over REST and wait for the worker; progress is observed while it runs."""
    with PladaClient(stack.url, token=stack.token()) as c:
        resp = c.publish(digits_spec(task_classes["digits"]), world_dir / "tasks" / "digits" / "train.npz")
        seen: list[float] = []
        job = c.wait_job(resp.job.id, timeout=600, poll=0.2, on_progress=lambda j: seen.append(j.progress))
        version = c.version("digits", resp.version)
    return {"resp": resp, "job": job, "version": version, "progress": seen}


def test_worker_publishes_a_version(published: dict[str, object], pool) -> None:  # type: ignore[no-untyped-def]
    job, version, seen = published["job"], published["version"], published["progress"]
    assert job.state == "succeeded" and job.progress == 1.0  # type: ignore[attr-defined]
    assert len(set(seen)) > 3 and seen == sorted(seen), "progress must be reported and monotone"  # type: ignore[arg-type]
    assert version.status == "ready" and version.n_items == 3_500  # type: ignore[attr-defined]
    m = version.metrics  # type: ignore[attr-defined]
    assert m["teacher"]["split"] == "server validation" and m["teacher"]["n_train"] + m["teacher"]["n_val"] == 1000
    assert 190 <= m["teacher"]["n_val"] <= 210  # 20 % held out per class
    assert m["teacher"]["val_accuracy"] > 0.5
    assert version.size_bytes < 1_000_000  # type: ignore[attr-defined]
    v = m["validation"]
    assert len(v["candidates"]) == 6 and v["chosen"] == m["selection"]["label"]
    best = max(c["val_accuracy"] for c in v["candidates"])
    assert v["predicted_client_accuracy"] >= best - 0.005
    assert m["leakage"]["exact_duplicates"] == 0  # sklearn digits are not in the pool


def test_cli_pull_inspect_train_evaluate(
    stack: LocalStack, published: dict[str, object], world_dir: Path, tmp_path: Path
) -> None:
    pool_dir = world_dir / "pools" / "mini-v1"
    out = tmp_path / "digits.plada"
    r = cli(
        "pull",
        "--server",
        stack.url,
        "--task",
        "digits",
        "--pool",
        str(pool_dir),
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
    )
    assert r.returncode == 0, r.stderr
    pulled = json.loads(r.stdout)
    assert pulled["verified"] and pulled["version"] == 1 and pulled["n_items"] == 3_500
    info = json.loads(cli("inspect", str(out)).stdout)
    assert info["task"] == "digits" and info["pool_name"] == "mini-v1" and info["checksum_ok"]
    assert info["sha256"] == published["version"].sha256  # type: ignore[attr-defined]
    r = cli(
        "train",
        "--payload",
        str(out),
        "--pool",
        str(pool_dir),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "5",
        "--eval",
        str(world_dir / "tasks" / "digits" / "test.npz"),
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_test"] == 797 and metrics["config"]["epochs"] == 5
    # chance is 10 % on 797 test digits (σ ≈ 1.8 points at 50 %); the paper's energy + Safety-Net recipe
    # measured 0.26 here, selector auto 0.52: demand well above what the paper's recipe reaches
    print(f"\ndigits student accuracy on the client test split: {metrics['test_accuracy']:.4f}")
    assert metrics["test_accuracy"] > 0.35, metrics
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "model.pt").is_file()


def test_etag_revalidation(stack: LocalStack, published: dict[str, object], pool) -> None:  # type: ignore[no-untyped-def]
    sha = published["version"].sha256  # type: ignore[attr-defined]
    r = httpx.get(f"{stack.url}/v1/tasks/digits/payload")
    assert r.status_code == 200 and r.headers["etag"] == f'"{sha}"'
    with pytest.raises(PayloadNeedsPoolError):  # coded in mini-v1's group order: needs the pool to decode
        decode_payload(r.content, expected_sha256=sha)
    assert decode_payload(r.content, expected_sha256=sha, layout=pool.layout).task == "digits"
    r304 = httpx.get(f"{stack.url}/v1/tasks/digits/payload", headers={"If-None-Match": f'"{sha}"'})
    assert r304.status_code == 304 and r304.content == b""
    immutable = httpx.get(f"{stack.url}/v1/tasks/digits/versions/1/payload")
    assert "immutable" in immutable.headers["cache-control"] and immutable.content == r.content


def test_wrong_pool_is_refused_with_one_line(stack: LocalStack, published: dict[str, object], tmp_path: Path) -> None:
    other = write_array_pool(
        tmp_path / "other", "other-pool", np.zeros((10, 28, 28), np.uint8), [f"k{i}" for i in range(10)]
    )
    out = tmp_path / "never.plada"
    r = cli(
        "pull",
        "--server",
        stack.url,
        "--task",
        "digits",
        "--pool",
        str(other.root),
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
    )
    assert r.returncode == 1 and not out.exists()
    assert r.stderr.count("\n") == 1 and "pool_mismatch" in r.stderr and "Traceback" not in r.stderr


def test_truncated_payload_is_refused_with_one_line(
    stack: LocalStack, published: dict[str, object], world_dir: Path, tmp_path: Path
) -> None:
    data = httpx.get(f"{stack.url}/v1/tasks/digits/payload").content
    bad = tmp_path / "cut.plada"
    bad.write_bytes(data[: len(data) - 100])
    for args in (
        ["inspect", str(bad)],
        [
            "train",
            "--payload",
            str(bad),
            "--pool",
            str(world_dir / "pools" / "mini-v1"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ],
    ):
        r = cli(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "payload_corrupt" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


class SlowLink(ThreadingHTTPServer):
    """A slow network between a client and the real server (the one part we cannot have on loopback):
    forwards GETs upstream and dribbles response bodies out in small chunks; ``half_sent`` is set once half
    of a body over 1 KB has gone out."""

    daemon_threads = True

    def __init__(self, upstream: str, delay: float) -> None:
        self.upstream, self.delay, self.half_sent = upstream, delay, threading.Event()
        link = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fwd = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                r = httpx.get(link.upstream + self.path, headers=fwd, timeout=30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                try:
                    for i in range(0, len(r.content), 256):
                        self.wfile.write(r.content[i : i + 256])
                        self.wfile.flush()
                        if len(r.content) > 1024 and i >= len(r.content) // 2:
                            link.half_sent.set()
                        time.sleep(link.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *_a: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def test_client_killed_mid_download_never_trains_on_a_partial_file(
    stack: LocalStack, published: dict[str, object], world_dir: Path, tmp_path: Path
) -> None:
    """kill -9 a client three times half-way through the payload download: nothing is cached, nothing is
    trained, the offline cache says so; the next run starts the download over and trains on verified bytes."""
    link = SlowLink(stack.url, delay=0.05)
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = ["train", "--task", "digits", "--cache", str(cache), "--pool", str(world_dir / "pools" / "mini-v1")]
    online = [*common, "--server", link.url, "--out", str(run), "--epochs", "1"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    try:
        for _ in range(3):
            link.half_sent.clear()
            proc = subprocess.Popen(
                [sys.executable, "-m", "plada.client.cli", "--json", *online],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert link.half_sent.wait(120), "the download never started"
            proc.kill()
            proc.wait()
            assert not list(cache.glob("payloads/*.plada")) and not list(cache.glob("refs/*/*.json"))
            assert not (run / "metrics.json").exists() and not (run / "model.pt").exists()
            off = subprocess.run(
                [sys.executable, "-m", "plada.client.cli", *common, "--out", str(run), "--epochs", "1"],
                env=env | {"PLADA_OFFLINE": "1"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert off.returncode == 1 and off.stderr.count("\n") == 1 and "no cached payload" in off.stderr
            assert not (run / "metrics.json").exists()
        link.delay = 0.0
        r = subprocess.run(
            [sys.executable, "-m", "plada.client.cli", "--json", *online], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        etag = httpx.get(f"{stack.url}/v1/tasks/digits/payload").headers["etag"].strip('"')
        assert [p.stem for p in cache.glob("payloads/*.plada")] == [etag]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["payload_sha256"] == etag and metrics["resumed_from_epoch"] == 0
    finally:
        link.shutdown()
        link.server_close()


def test_agent_trains_each_version_once_and_survives_a_server_restart(
    stack: LocalStack, published: dict[str, object], pool, world_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cfg = AgentConfig(
        tasks=["digits", "not-yet"],
        out_dir=tmp_path / "runs",
        poll_s=0.1,
        train=TrainConfig(epochs=1),
        eval_splits={"digits": world_dir / "tasks" / "digits" / "test.npz"},
        client_id="agent-e2e",
    )
    results: list[dict[str, object]] = []
    with PladaClient(stack.url, token=stack.token("read"), cache_dir=tmp_path / "cache", retries=0) as c:
        agent = Agent(c, pool, cfg)
        assert agent.run(max_rounds=1) == 1
        assert agent.run(max_rounds=2) == 0, "the same version must not be trained twice"
        port = int(stack.url.rsplit(":", 1)[1])
        stack.stop_server()
        assert agent.run(max_rounds=2) == 0  # server down: logged, not raised
        stack.start_server(port=port)
        # a restarted agent (fresh object, same state file) still knows what it trained
        agent2 = Agent(c, pool, cfg)
        assert agent2.poll_task("digits", on_result=results.append) is False
        reports = c.reports("digits", 1)  # the agent told the server how its student did, once
        assert [(r.client_id, r.epochs, r.n_test) for r in reports] == [("agent-e2e", 1, 797)]
        assert reports[0].accuracy is not None and c.version("digits", 1).reports.count == 1  # type: ignore[union-attr]
    state = json.loads((tmp_path / "runs" / "agent-state.json").read_text())
    assert list(state["trained"]) == ["digits"] and len(state["trained"]["digits"]) == 1
    metrics = json.loads((tmp_path / "runs" / "digits" / "v1" / "metrics.json").read_text())
    assert metrics["n_test"] == 797


def test_killed_worker_loses_its_lease_and_another_finishes(
    stack: LocalStack, world_dir: Path, task_classes: dict[str, list[str]]
) -> None:
    """kill -9 the worker mid-job, twice in a row; each time the lease runs out and a fresh worker takes the job
    over from the start; the third attempt publishes."""
    for w in stack.workers:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=60)
    with PladaClient(stack.url, token=stack.token()) as c:
        spec = digits_spec(
            task_classes["digits"],
            name="digits-crash",
            teacher={"epochs": 3},
            selector={"name": "energy", "safety_net_share": 0.5, "validate_candidates": False},
        )
        resp = c.publish(spec, world_dir / "tasks" / "digits" / "train.npz")
        for attempt in (1, 2):
            victim = stack.start_worker()
            deadline = time.monotonic() + 120
            while (j := c.job(resp.job.id)).attempts < attempt or j.progress <= 0.05:
                assert time.monotonic() < deadline, f"attempt {attempt} never made progress"
                time.sleep(0.1)
            victim.kill()
            victim.wait()
            running = c.job(resp.job.id)
            assert running.state == "running" and running.attempts == attempt
        stack.start_worker()
        job = c.wait_job(resp.job.id, timeout=300, poll=0.2)
        assert job.state == "succeeded" and job.attempts == 3
        assert c.version("digits-crash", resp.version).status == "ready"


def test_readme_python_quickstart_runs(
    stack: LocalStack, published: dict[str, object], world_dir: Path, tmp_path: Path
) -> None:
    """The README's Python block, run as written against this stack (only URL, paths, task and epochs swapped)."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"## Quickstart in Python\n```python\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]
    for old, new in (
        ("http://127.0.0.1:8000", stack.url),
        ("~/.cache/plada/world/pools/mini-v1", str(world_dir / "pools" / "mini-v1")),
        ('"fashion"', '"digits"'),
        ("runs/fashion", str(tmp_path / "run")),
        ("epochs=10", "epochs=1"),
    ):
        assert old in code, old
        code = code.replace(old, new)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["ds"]) == 3_500 and scope["metrics"]["n_items"] == 3_500  # type: ignore[arg-type,index]


def test_versions_are_signed_and_a_pinned_client_checks_them(
    stack: LocalStack, published: dict[str, object], world_dir: Path, tmp_path: Path, pool: Pool
) -> None:
    from plada.shared.errors import SignatureError
    from plada.shared.signing import load_or_create_key

    with PladaClient(stack.url) as c:
        key = c.signing_key()
        assert c.version("digits", 1).signature.split(":")[1] == key.key_id  # type: ignore[union-attr]
    with PladaClient(stack.url, cache_dir=tmp_path / "c1", trust=key) as c:
        assert c.fetch("digits", pool=pool).version == 1
    stranger = load_or_create_key(tmp_path / "stranger.key").public
    with PladaClient(stack.url, cache_dir=tmp_path / "c2", trust=stranger) as c, pytest.raises(SignatureError):
        c.fetch("digits", pool=pool)
    pool_dir = str(world_dir / "pools" / "mini-v1")
    out = tmp_path / "d.plada"
    r = cli(
        "pull", "--server", stack.url, "--task", "digits", "--pool", pool_dir, "--out", str(out), "--trust", key.text
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["signature"] == "verified with the pinned key"
    info = json.loads(cli("inspect", str(out), "--pool", pool_dir, "--trust", key.text).stdout)
    assert info["signature"]["verified"] is True and info["signature"]["signer"] == key.key_id
    r = cli("inspect", str(out), "--pool", pool_dir, "--trust", stranger.text, "--require-signature")
    assert r.returncode == 1 and "signature_invalid" in r.stderr and r.stderr.count("\n") == 1
    sig = out.with_name(out.name + ".sig")
    sig.write_text(sig.read_text().replace(key.key_id, stranger.key_id))
    r = cli("import", str(out), "--pool", pool_dir, "--trust", key.text, "--cache", str(tmp_path / "c3"))
    assert r.returncode == 1 and "signature_invalid" in r.stderr
    assert not (tmp_path / "c3" / "payloads").exists()
