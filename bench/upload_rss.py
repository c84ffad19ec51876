"""Peak memory of the API process per upload: what a publish of a small file that inflates a lot costs.

    python bench/upload_rss.py [--mib 64 256 1000]

Starts a real API process (uvicorn, SQLite, auth on, no worker: jobs stay queued), then POSTs, one after the
other and growing, ``.npz`` uploads of all-zero images that compress ~1000× (x uint8 of the given MiB, inside
the default ``PLADA_MAX_DECODED_BYTES`` of 1 GiB) and reads the process's peak resident set (``VmHWM`` in
``/proc/<pid>/status``) after each. Prints upload bytes, decoded bytes and the peak growth per decoded byte.
Each row checks that the publish was accepted (202) — a refused upload measured nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.local import LocalStack
from plada.shared.datasets.mini import default_world_dir


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", nargs="+", type=int, default=[64, 256, 1000])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(data_dir=Path(tmp) / "d", pools_dir=default_world_dir() / "pools", log_dir=Path(tmp) / "l")
        with stack:
            stack.start_server()
            assert stack.server is not None
            pid = stack.server.pid
            token = stack.token()
            time.sleep(1.0)
            base = peak_kib(pid)
            rng = np.random.default_rng(0)
            for i, mib in enumerate(args.mib):
                n = mib * (1 << 20) // (64 * 64)  # 64 px images: under the 1,000,000-image cap
                buf = io.BytesIO()
                x = np.zeros((n, 64, 64), np.uint8)
                flat = x.reshape(-1)
                hit = rng.random(flat.size) < 0.001
                flat[hit] = rng.integers(1, 255, int(hit.sum()), dtype=np.uint8)
                np.savez_compressed(buf, x=x, y=np.arange(n) % 2)
                del x, flat, hit
                spec = {"name": f"rss-{i}", "classes": ["a", "b"], "pool_id": "mini-v1", "keep": 0.01}
                r = httpx.post(
                    f"{stack.url}/v1/tasks",
                    data={"spec": json.dumps(spec)},
                    files={"data": ("d.npz", buf.getvalue())},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=600,
                )
                assert r.status_code == 202, r.text[:300]
                peak = peak_kib(pid)
                decoded = n * 64 * 64
                rows.append((len(buf.getvalue()), decoded, base, peak))
                print(f"# {mib} MiB decoded: peak {peak / 1024:.0f} MiB", file=sys.stderr, flush=True)
    print("| upload bytes | decoded bytes | API peak RSS before → after (MiB) | growth / decoded byte", end="")
    print(" | / upload byte |")
    print("|---:|---:|---|---:|---:|")
    for up, dec, base, peak in rows:
        grow = (peak - base) * 1024
        print(f"| {up:,} | {dec:,} | {base / 1024:.0f} → {peak / 1024:.0f} | {grow / dec:.2f} | {grow / up:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
