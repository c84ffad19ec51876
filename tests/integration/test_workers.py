"""plada-server serve --workers N: several API processes share one port and one database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.local import free_port


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(") ")[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def test_two_api_processes_serve_one_port(tmp_path: Path, world_dir: Path) -> None:
    port = free_port()
    env = dict(os.environ) | {"PLADA_DATA_DIR": str(tmp_path / "data"), "PLADA_POOLS_DIR": str(world_dir / "pools")}
    cmd = [sys.executable, "-m", "plada.server.cli", "serve", "--port", str(port), "--workers", "2"]
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        time.sleep(2)  # both workers up
        assert len(_children(proc.pid)) >= 2, _children(proc.pid)
        pools = httpx.get(f"http://127.0.0.1:{port}/v1/pools").json()
        assert pools["count"] == 1  # registered once, though two processes started together
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/v1/tasks").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([*cmd[:-4], "--port", "0", "--workers", "2"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "fixed --port" in bad.stderr
