"""How fast a version's page is with many classes: a real server and worker, a 100-class task on the mini
world (Fashion-MNIST's ten classes each split into brightness deciles: learnable, so every class keeps items and
has a full grid), then the page and its thumbnails timed over HTTP.

    python bench/version_page.py --world .cache/world [--classes 100] [--repeat 5]

Prints one table: the page cold (first render decodes the payload and the preview) and warm, its size and
tile count, thumbnails drawn (cold) and read from the disk cache (warm), the page's load in headless
Chromium (when installed) and the thumbnail cache's bytes on disk.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from plada.client import PladaClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/ lives beside the packages (not shipped)
from harness.local import LocalStack


def _ms(f: float) -> str:
    return f"{1000 * f:.1f}"


def _in_chromium(url: str) -> float | None:
    """Seconds from navigation to the load event in headless Chromium (visible thumbnails drawn; the rest
    are lazy), or None without Chromium."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)  # warm the connection, not the page
        t0 = time.perf_counter()
        page.goto(url, wait_until="load")
        took = time.perf_counter() - t0
        browser.close()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=Path(".cache/world"))
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with np.load(args.world / "tasks" / "fashion" / "train.npz") as z:
        x, y10 = z["x"], z["y"].astype(np.int64)
    # 100 classes a teacher can learn: each garment class split into brightness deciles
    per = max(1, args.classes // 10)
    bright = x.reshape(len(x), -1).mean(1)
    y = np.zeros(len(x), np.int64)
    for c in range(10):
        m = y10 == c
        edges = np.quantile(bright[m], np.linspace(0, 1, per + 1)[1:-1])
        y[m] = c * per + np.searchsorted(edges, bright[m])
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    spec = {
        "name": "many",
        "classes": [f"class-{c:03d}" for c in range(10 * per)],
        "pool_id": "mini-v1",
        "keep": 0.05,
        "teacher": {"epochs": 3},
        # quotas with α = 0: every class gets its share, so every class has a full grid to draw
        "selector": {"name": "energy", "safety_net_share": 1.0, "safety_net_alpha": 0.0, "validate_candidates": False},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(data_dir=Path(tmp) / "d", pools_dir=args.world / "pools", log_dir=Path(tmp) / "l")
        with stack:
            stack.start_server()
            stack.start_worker()
            with PladaClient(stack.url, token=stack.token()) as c:
                job = c.publish(spec, buf.getvalue(), filename="many.npz").job.id
                assert c.wait_job(job, timeout=1800).state == "succeeded"
            url = f"{stack.url}/tasks/many/versions/1"
            with httpx.Client(timeout=60) as h:
                t0 = time.perf_counter()
                r = h.get(url)
                cold = time.perf_counter() - t0
                assert r.status_code == 200, r.text[:300]
                warm = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    h.get(url).raise_for_status()
                    warm.append(time.perf_counter() - t0)
                tiles = r.text.count("class=tile")
                srcs = [s.split('"')[0] for s in r.text.split('src="')[1:] if "/thumbs/" in s.split('"')[0]][:100]
                t0 = time.perf_counter()
                for s in srcs:
                    h.get(stack.url + s).raise_for_status()
                thumbs_cold = (time.perf_counter() - t0) / len(srcs)
                t0 = time.perf_counter()
                for s in srcs:
                    h.get(stack.url + s).raise_for_status()
                thumbs_warm = (time.perf_counter() - t0) / len(srcs)
            browser_s = _in_chromium(url)
            disk = sum(p.stat().st_size for p in (stack.data_dir / "thumbs").glob("*/*.png"))
    rows.append(
        (
            args.classes,
            tiles,
            f"{len(r.content) / 1024:.0f}",
            _ms(cold),
            _ms(statistics.median(warm)),
            _ms(thumbs_cold),
            _ms(thumbs_warm),
            "-" if browser_s is None else _ms(browser_s),
            f"{disk:,}",
        )
    )
    print("| classes | tiles on the page | page KiB | page cold ms | page warm ms (median) | thumbnail drawn ms | "
          "thumbnail cached ms | Chromium load ms | thumb cache bytes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
