"""docker-compose.yml without Docker: every service's command runs as a local process, in dependency order,
with the compose volumes mapped to folders and the service names to loopback addresses; the nginx service is
Debian's nginx with the same template. The whole loop must close: the publishers post the three mini-world
tasks through the front, the worker publishes them, the agent pulls the payloads through the front, trains,
and its reports reach the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from harness.local import NginxFront, free_port, nginx_binary, stop_all

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(nginx_binary() is None, reason="needs nginx (Debian: apt-get install nginx-light)"),
]


def _order(services: dict[str, dict]) -> list[str]:  # type: ignore[type-arg]
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        done.append(name)

    for name in services:
        visit(name)
    return done


def test_the_compose_services_close_the_loop(tmp_path: Path, world_dir: Path) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    api_port = free_port()
    folders = {"world": world_dir, "db": tmp_path / "data", "runs": tmp_path / "runs", "cache": tmp_path / "cache"}
    mounts = {"/world": folders["world"], "/data": folders["db"], "/runs": folders["runs"]}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    hosts: dict[str, str] = {"http://server:8000": f"http://127.0.0.1:{api_port}"}
    bin_dir = Path(sys.executable).parent
    # what the images set (Dockerfile.server / Dockerfile.client ENV)
    base_env = dict(os.environ) | {
        "PLADA_DATA_DIR": str(folders["db"]),
        "PLADA_POOLS_DIR": str(folders["world"] / "pools"),
        "PLADA_CACHE": str(folders["cache"]),
        "PYTHONUNBUFFERED": "1",
    }
    running: list[subprocess.Popen[bytes]] = []
    handles: list[object] = []
    front: NginxFront | None = None
    logs = tmp_path / "logs"
    logs.mkdir()

    def argv(cmd: list[str]) -> list[str]:
        out = []
        for a in cmd:
            for old, new in hosts.items():
                a = a.replace(old, new)
            for old, folder in mounts.items():
                if a == old or a.startswith(old + "/"):
                    a = str(folder) + a[len(old) :]
                elif f"={old}/" in a:  # --eval TASK=/world/...
                    a = a.replace(f"={old}/", f"={folder}/")
            out.append(a)
        if out[:2] == ["plada-server", "serve"]:
            out[out.index("--port") + 1] = str(api_port)
            out[out.index("--host") + 1] = "127.0.0.1"
        return [str(bin_dir / out[0]), *out[1:]]

    try:
        for name in _order(services):
            svc = services[name]
            if "image" in svc:  # the nginx front
                env = svc["environment"]
                front = NginxFront(
                    tmp_path / "nginx", hosts["http://server:8000"].removeprefix("http://"), folders["db"] / "blobs"
                )
                assert env["PLADA_BLOB_DIR"] == "/data/blobs" and env["PLADA_UPSTREAM"] == "server:8000"
                hosts["http://nginx:8080"] = front.start()
                continue
            env = base_env | {k: str(v) for k, v in svc.get("environment", {}).items()}
            cmd = argv(svc["command"])
            one_shot = name in ("world", "embed") or name.startswith("publish-")
            log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            if one_shot:
                r = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
                log.close()
                assert r.returncode == 0, f"{name}: {(logs / f'{name}.log').read_text()[-2000:]}"
                continue
            handles.append(log)
            running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            if name == "server":  # service_healthy
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(hosts["http://server:8000"] + "/healthz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, (logs / "server.log").read_text()[-2000:]
                    time.sleep(0.2)
        url = hosts["http://nginx:8080"]
        deadline = time.monotonic() + 1500
        pending = {"fashion", "animals", "digits"}
        while pending:
            for task in list(pending):
                r = httpx.get(f"{url}/v1/tasks/{task}/versions/1/reports", timeout=10)
                if r.status_code == 200 and r.json()["count"] >= 1:
                    pending.discard(task)
            for p in running:
                assert p.poll() is None, f"a service exited: {p.args}"
            assert time.monotonic() < deadline, f"no report yet for {pending}; logs in {logs}"
            time.sleep(2)
        for task in ("fashion", "animals", "digits"):
            rep = httpx.get(f"{url}/v1/tasks/{task}/versions/1/reports").json()["data"][0]
            assert rep["accuracy"] is not None and rep["accuracy"] > 0.2, rep
        # the agent's payloads came through the front: nginx served them from the blob folder
        assert any((folders["db"] / "blobs" / "sha256").rglob("*"))
        dash = httpx.get(url + "/").text
        assert all(t in dash for t in ("fashion", "animals", "digits"))
    finally:
        stop_all(running, timeout=20)
        for h in handles:
            h.close()  # type: ignore[attr-defined]
        if front is not None:
            front.stop()
        shutil.rmtree(folders["runs"], ignore_errors=True)
