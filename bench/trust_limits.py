"""Resource-exhaustion cases, measured: what one hostile request costs the server or the client.

    python bench/trust_limits.py            # this checkout
    PYTHONPATH=/path/to/old/plada-parent python bench/trust_limits.py   # an older checkout, for before/after

Runs against whatever ``plada`` is importable (the server subprocess inherits PYTHONPATH), so the same script
measures before and after a change. Prints one table row per case:

- ``anon-upload``: an anonymous 200 MB publish over loopback: seconds until the answer, and the status;
- ``stored-npz``: an npz of 10,000 64x64 zero images (~0.2 MB uploaded, 41 MB decoded): bytes the server
  keeps on disk for it;
- ``zip-decode``: a zip of 600 PNGs of 1000x1000 (600 MB decoded) with a 200 MB decoded budget where the
  server has one: seconds until the answer (decoding everything first is the cost);
- ``client-gzip``: a server answering ``/v1/tasks`` with 64 KB of gzip that inflates to 64 MB: the client's
  peak Python memory (tracemalloc) and the outcome;
- ``client-trickle``: a server trickling one header byte every 0.3 s: seconds until the client gives up (cut
  at 60 s here).
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tempfile
import threading
import time
import tracemalloc
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import plada.client
from plada.client import PladaClient
from plada.shared.datasets.mini import build_mini_world, default_world_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/ lives beside the packages (not shipped)
from harness.local import LocalStack

SPEC = {"name": "limits", "classes": ["a", "b"], "pool_id": "mini-v1", "keep": 0.01, "teacher": {"epochs": 1}}


def _stack(tmp: Path, world: Path, **env: str) -> LocalStack:
    stack = LocalStack(
        data_dir=tmp / "data",
        pools_dir=world / "pools",
        log_dir=tmp / "logs",
        env={"PLADA_PUBLISH_RATE_PER_MIN": "1000", "PLADA_MAX_UPLOAD_BYTES": str(300 << 20)} | env,
    )
    stack.start_server()
    return stack


def anon_upload(world: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = _stack(Path(tmp), world)
        try:
            blob = b"\0" * (200 << 20)
            t0 = time.perf_counter()
            try:
                r = httpx.post(
                    f"{stack.url}/v1/tasks",
                    data={"spec": json.dumps(SPEC)},
                    files={"data": ("d.npz", blob)},
                    timeout=120,
                )
                status: Any = r.status_code
            except httpx.HTTPError as exc:  # the server may answer and close before the body is sent
                status = type(exc).__name__
            return {"case": "anon-upload", "seconds": round(time.perf_counter() - t0, 2), "result": status}
        finally:
            stack.stop()


def stored_npz(world: Path) -> dict[str, Any]:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((10_000, 64, 64), np.uint8), y=np.repeat([0, 1], 5000))
    with tempfile.TemporaryDirectory() as tmp:
        stack = _stack(Path(tmp), world)
        try:
            r = httpx.post(
                f"{stack.url}/v1/tasks",
                data={"spec": json.dumps(SPEC)},
                files={"data": ("d.npz", buf.getvalue())},
                headers={"Authorization": f"Bearer {stack.token()}"},
                timeout=120,
            )
            stored = sum(p.stat().st_size for p in (stack.data_dir / "uploads").glob("*.npz"))
            return {
                "case": "stored-npz",
                "uploaded_bytes": len(buf.getvalue()),
                "stored_bytes": stored,
                "result": r.status_code,
            }
        finally:
            stack.stop()


def zip_decode(world: Path) -> dict[str, Any]:
    from PIL import Image

    img = io.BytesIO()
    Image.new("L", (1000, 1000), 7).save(img, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(600):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", img.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        stack = _stack(Path(tmp), world, PLADA_MAX_DECODED_BYTES=str(200 << 20))
        try:
            t0 = time.perf_counter()
            r = httpx.post(
                f"{stack.url}/v1/tasks",
                data={"spec": json.dumps(SPEC)},
                files={"data": ("d.zip", buf.getvalue())},
                headers={"Authorization": f"Bearer {stack.token()}"},
                timeout=600,
            )
            return {"case": "zip-decode", "seconds": round(time.perf_counter() - t0, 2), "result": r.status_code}
        finally:
            stack.stop()


class _Hostile:
    def __init__(self, route: Any) -> None:
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                route(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def client_gzip() -> dict[str, Any]:
    bomb = gzip.compress(b'{"data": [' + b" " * (64 << 20) + b'], "count": 0}')

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(bomb)))
        h.end_headers()
        h.wfile.write(bomb)

    srv = _Hostile(route)
    tracemalloc.start()
    try:
        with PladaClient(srv.url, retries=0) as c:
            result = f"accepted ({len(c.tasks())} tasks)"
    except Exception as exc:
        result = type(exc).__name__
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    srv.close()
    return {"case": "client-gzip", "gzip_bytes": len(bomb), "peak_mib": round(peak / 2**20, 1), "result": result}


def client_trickle() -> dict[str, Any]:
    def route(h: BaseHTTPRequestHandler) -> None:
        try:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass

    srv = _Hostile(route)
    out: dict[str, Any] = {"case": "client-trickle", "result": "still waiting at 60 s (cut)"}

    import inspect

    kw = {"deadline": 10.0} if "deadline" in inspect.signature(PladaClient).parameters else {}
    out["deadline"] = kw.get("deadline", "none")

    def call() -> None:
        try:
            with PladaClient(srv.url, retries=0, **kw) as c:
                c.tasks()
            out["result"] = "answered"
        except Exception as exc:
            out["result"] = type(exc).__name__

    t0 = time.perf_counter()
    th = threading.Thread(target=call, daemon=True)
    th.start()
    th.join(60)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    srv.close()
    return out


def main() -> int:
    world = default_world_dir()
    build_mini_world(world, log=lambda _m: None)
    print(f"plada from {Path(plada.client.__file__).resolve().parents[1]}", file=sys.stderr)
    rows = [anon_upload(world), stored_npz(world), zip_decode(world), client_gzip(), client_trickle()]
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
