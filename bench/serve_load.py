"""How fast does plada serve payloads? N concurrent clients on loopback, against a plain static file server.

    python bench/serve_load.py [--clients 1 50 200] [--seconds 5]

Starts a real plada server (uvicorn, one process, SQLite, auth on) and a worker, publishes one mini-world
task quickly (probe teacher on cached features, fixed selector), then drives N concurrent clients
(asyncio + httpx, keep-alive) for a fixed time each:

- ``full``: GET the version's payload (bytes every time);
- ``etag``: GET with ``If-None-Match`` (the agent's steady state: 304, no body; a 200 or a body there counts as
  an error: it would have measured full downloads);

and the same payload file from a static server in the same run (nginx if installed, else
``python -m http.server``; the latter answers If-None-Match with the full file, so it only has ``full``).
Prints requests/s, p50/p99 latency and errors per row, and plada/static. The load generator is ApacheBench
(``ab``, Debian apache2-utils) when installed, else a Python asyncio one (slower: it measures itself at high N).
Loopback only; the generator shares this machine's cores with the servers, so absolute numbers are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from plada.client import PladaClient
from plada.server.pipeline.features import build_feature_index, open_feature_index
from plada.shared.datasets.mini import build_mini_world, default_world_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/ lives beside the packages (not shipped)
from harness.local import LocalStack, NginxFront, free_port, nginx_binary


def _expected(headers: dict[str, str]) -> int:
    """The status a row must get: 304 where it polls with If-None-Match (a 200 there measured something else:
    full downloads), 200 everywhere else. Anything else counts as an error."""
    return 304 if "If-None-Match" in headers else 200


async def _drive(url: str, clients: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    r = await client.get(url, headers=headers)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != _expected(headers) or (r.status_code == 304 and r.content):
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000 if lat else np.zeros(1)
    return {
        "requests": len(lat),
        "rps": len(lat) / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
        "statuses": statuses,
    }


def _drive_ab(ab: str, url: str, clients: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    """ApacheBench (C, keep-alive): a load generator that costs far less CPU than Python's."""
    cmd = [ab, "-q", "-k", "-c", str(clients), "-t", str(seconds), "-n", "10000000", "-r"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout

    def num(pattern: str, default: float = 0.0) -> float:
        m = re.search(pattern, out, re.M)
        return float(m.group(1)) if m else default

    done = int(num(r"^Complete requests:\s+(\d+)"))
    non2xx = int(num(r"^Non-2xx responses:\s+(\d+)"))
    failed = int(num(r"^Failed requests:\s+(\d+)"))
    length = int(num(r"^Document Length:\s+(\d+)", -1))
    # an etag row expects every answer a 304 without a body (ab counts 304s as non-2xx); others a 200
    polls = _expected(headers) == 304
    # (ab may count one 304 more than it completed when the time runs out: never a negative error count)
    errors = failed + (max(0, done - non2xx) + (done if length > 0 else 0) if polls else non2xx)
    return {
        "requests": done,
        "rps": num(r"^Requests per second:\s+([\d.]+)"),
        "p50_ms": num(r"^\s+50%\s+(\d+)"),
        "p99_ms": num(r"^\s+99%\s+(\d+)"),
        "errors": errors,
        "non_2xx": non2xx,
        "document_bytes": length,
        "generator": "ab",
    }


def _static_server(folder: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    nginx = shutil.which("nginx")
    if nginx:
        conf = folder / "nginx.conf"
        conf.write_text(
            f"daemon off; worker_processes 1; pid {folder}/nginx.pid; error_log {folder}/error.log;"
            f"events {{ worker_connections 1024; }} http {{ access_log off; etag on;"
            f" server {{ listen 127.0.0.1:{port}; root {folder}; }} }}"
        )
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(folder)], stderr=subprocess.DEVNULL)
        name = "nginx"
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        name = "python -m http.server"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}", name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 50, 200])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--world", type=Path, default=default_world_dir())
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args(argv)
    if max(args.clients) > 1000 or args.seconds > 60:
        ap.error("bounded on purpose: at most 1000 clients and 60 s per row")
    rows: list[dict[str, Any]] = []
    pool = build_mini_world(args.world, log=lambda m: print(m, file=sys.stderr))
    if open_feature_index(pool) is None:  # the quick publish below uses the probe teacher
        build_feature_index(pool)
    ab = shutil.which("ab")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(
            data_dir=Path(tmp) / "server", pools_dir=args.world / "pools", env={"PLADA_ACCEL_REDIRECT": "/_blobs/"}
        ) as stack,
    ):
        url = stack.start_server()
        stack.start_worker()
        classes = json.loads((args.world / "tasks" / "fashion" / "task.json").read_text())["classes"]
        spec = {
            "name": "fashion",
            "classes": classes,
            "pool_id": "mini-v1",
            "keep": 0.05,
            "teacher": {"arch": "probe"},
            "selector": {
                "name": "domain",
                "safety_net_share": 1.0,
                "safety_net_alpha": 0.0,
                "validate_candidates": False,
            },
        }
        with PladaClient(url, token=stack.token()) as c:
            resp = c.publish(spec, args.world / "tasks" / "fashion" / "train.npz")
            gated = c.publish(
                spec | {"name": "fashion-gated", "access": "token"}, args.world / "tasks/fashion/train.npz"
            )
            c.wait_job(resp.job.id, timeout=600)
            c.wait_job(gated.job.id, timeout=600)
            v = c.version("fashion", resp.version)
            data = c.download("fashion", resp.version).data
        front = NginxFront(Path(tmp) / "front", url.removeprefix("http://"), stack.data_dir / "blobs")
        front_url = front.start() if nginx_binary() else None
        assert data is not None and v.sha256
        static_dir = Path(tmp) / "static"
        static_dir.mkdir()
        (static_dir / "fashion.plada").write_bytes(data)
        for p in (Path(tmp), static_dir, static_dir / "fashion.plada"):  # nginx workers run unprivileged
            p.chmod(0o755)
        proc, static_url, static_name = _static_server(static_dir)
        try:
            payload_url = f"{url}/v1/tasks/fashion/versions/{resp.version}/payload"
            for n in args.clients:
                targets = [
                    ("plada", "full", payload_url, {}),
                    ("plada", "etag", payload_url, {"If-None-Match": f'"{v.sha256}"'}),
                    (static_name, "full", f"{static_url}/fashion.plada", {}),
                ]
                if front_url:  # the shipped front: public from nginx's cache, gated via X-Accel-Redirect
                    front_payload = payload_url.replace(url, front_url)
                    gated_url = f"{front_url}/v1/tasks/fashion-gated/versions/1/payload"
                    targets += [
                        ("plada+nginx front", "full", front_payload, {}),
                        ("plada+nginx front", "etag", front_payload, {"If-None-Match": f'"{v.sha256}"'}),
                        (  # what agents poll: the latest pointer, answered by the API's hot path behind the front
                            "plada+nginx front, latest",
                            "etag",
                            f"{front_url}/v1/tasks/fashion/payload",
                            {"If-None-Match": f'"{v.sha256}"'},
                        ),
                        ("plada+nginx front, gated", "full", gated_url, {"Authorization": f"Bearer {stack.token()}"}),
                    ]
                for server, mode, target, headers in targets:
                    if ab:
                        res = _drive_ab(ab, target, n, args.seconds, headers)
                    else:
                        res = asyncio.run(_drive(target, n, args.seconds, headers))
                    rows.append({"server": server, "mode": mode, "clients": n, **res})
                    print(
                        f"# {server:22s} {mode:4s} N={n:<4d} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                        f"p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            front.stop()
    print(f"\npayload: {len(data):,} bytes; {args.seconds:g} s per row; loopback; load generator on the same cores\n")
    print("| server | mode | clients | requests | req/s | p50 ms | p99 ms | errors | plada/static (req/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    static_rps = {r["clients"]: r["rps"] for r in rows if r["server"] == static_name}
    for r in rows:
        ratio = f"{r['rps'] / static_rps[r['clients']]:.2f}" if r["server"].startswith("plada") else ""
        print(
            f"| {r['server']} | {r['mode']} | {r['clients']} | {r['requests']:,} | {r['rps']:,.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {ratio} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
