"""How fast are plada's hot read routes in Python, against a bare FastAPI async route on the same machine?

    python bench/api_speed.py [--clients 50] [--seconds 5]

One uvicorn process each (httptools + uvloop when installed): plada (SQLite, auth on, default
PLADA_SNAPSHOT_TTL_S) with one task whose latest version is ready, and a bare FastAPI app answering
``{"ok": true}`` from an async route. ApacheBench (``ab -k``; Debian apache2-utils) drives each route for a
fixed time at N keep-alive clients. Prints req/s, mean and p99 latency, errors, and the ratio to the bare
route. Loopback only; the load generator shares the cores, so absolute numbers are a floor.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from plada.shared.datasets.mini import build_mini_world, default_world_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/ lives beside the packages (not shipped)
from harness.local import LocalStack, free_port

BARE = """
from fastapi import FastAPI

app = FastAPI()

@app.get("/hello")
async def hello():
    return {"ok": True}
"""


def ab(url: str, clients: int, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    cmd = ["ab", "-k", "-q", "-c", str(clients), "-t", str(seconds), "-n", "10000000", "-e", "/dev/stdout"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    mean = float(re.search(r"Time per request:\s+([\d.]+) \[ms\] \(mean\)", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"^99,([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx responses:\s+(\d+)", out)) else 0
    return {"rps": rps, "mean_ms": mean, "p99_ms": p99, "failed": failed, "non_2xx": non2xx}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[50])
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("ab") is None:
        print("needs ApacheBench: apt-get install apache2-utils", file=sys.stderr)
        return 1
    world = default_world_dir()
    build_mini_world(world, log=lambda _m: None)
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8), y=np.repeat([0, 1], 6))
    spec = {"name": "speed", "classes": ["a", "b"], "pool_id": "mini-v1", "teacher": {"epochs": 1}}
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(data_dir=Path(tmp) / "data", pools_dir=world / "pools", log_dir=Path(tmp) / "logs") as stack,
    ):
        stack.start_server()
        r = httpx.post(
            f"{stack.url}/v1/tasks",
            data={"spec": json.dumps(spec)},
            files={"data": ("d.npz", buf.getvalue())},
            headers={"Authorization": f"Bearer {stack.token()}"},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        sha = "ab" * 32
        db = sqlite3.connect(stack.data_dir / "plada.db")
        with db:  # no worker: the latest pointer only needs a ready row and its digest for a 304
            db.execute("UPDATE versions SET status = 'ready', sha256 = ?", (sha,))
            db.execute("UPDATE tasks SET latest_version = 1")
        db.close()
        bare_dir = Path(tmp) / "bare"
        bare_dir.mkdir()
        (bare_dir / "bare_app.py").write_text(BARE)
        port = free_port()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=bare_dir,
        )
        try:
            bare_url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(bare_url + "/hello", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for n in args.clients:
                base = ab(bare_url + "/hello", n, args.seconds, {})
                rows.append({"route": "bare FastAPI async /hello", "clients": n, **base, "ratio": 1.0})
                for name, url, headers in (
                    ("plada /healthz", f"{stack.url}/healthz", {}),
                    ("plada GET /v1/tasks/{task}", f"{stack.url}/v1/tasks/speed", {}),
                    ("plada latest 304", f"{stack.url}/v1/tasks/speed/payload", {"If-None-Match": f'"{sha}"'}),
                ):
                    res = ab(url, n, args.seconds, headers)
                    rows.append({"route": name, "clients": n, **res, "ratio": round(res["rps"] / base["rps"], 2)})
        finally:
            bare.terminate()
            bare.wait(timeout=10)
    print("| route | clients | req/s | mean ms | p99 ms | failed | non-2xx | ratio to bare |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['route']} | {r['clients']} | {r['rps']:,.0f} | {r['mean_ms']:.2f} | {r['p99_ms']:.0f} | "
            f"{r['failed']} | {r['non_2xx']} | {r['ratio']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
