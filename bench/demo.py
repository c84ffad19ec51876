"""The whole loop on the built-in mini world, end to end, with real processes; prints one table.

    make demo        (or: python bench/demo.py [--keep 0.05] [--teacher-epochs 10] [--student-epochs 10])

1. builds the mini world (pool mini-v1 + tasks fashion, animals, digits) into a cache folder, once;
2. starts a real server (uvicorn, SQLite) and a worker process on loopback;
3. publishes the three tasks over REST (each publisher's train split only);
4. for each task: waits for the job, pulls + verifies the payload, trains a student on the local pool and
   evaluates it on the client's held-out test split;
5. stops everything and prints: task, keep %, kept items, payload bytes, the selection the server chose,
   teacher accuracy and predicted client accuracy (both on the server's validation split), student accuracy
   (client test split) and wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from plada.client import PladaClient, TrainConfig, load_eval_split, train_student
from plada.server.pipeline.features import build_feature_index, open_feature_index
from plada.shared.cli import stage_progress
from plada.shared.datasets.mini import TASKS, build_mini_world, default_world_dir
from plada.shared.schemas import TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/ lives beside the packages (not shipped)
from harness.local import LocalStack


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=default_world_dir())
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--keep", type=float, default=0.05, help="fraction of the pool kept per task")
    ap.add_argument(
        "--selector", default="auto", help="auto (the server validates candidates and ships the best) or a name"
    )
    # With a named selector: the paper's Safety-Net (per-class quotas K_c ∝ N_c^α over a share s of the budget).
    ap.add_argument("--safety-net-share", type=float, default=0.5)
    ap.add_argument("--safety-net-alpha", type=float, default=0.5)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    # the demo keeps within ~15 minutes on 2 CPU cores from a bare clone: shorter students and proxy students
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--proxy-epochs", type=int, default=3, help="epochs of each validation proxy student")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = ap.parse_args()
    t_start = time.perf_counter()
    pool = build_mini_world(args.world, log=lambda m: print(m, file=sys.stderr))
    if open_feature_index(pool) is None:  # `make world` embeds the pool; a bare run does it here, once
        print("embedding pool mini-v1 once (feature index for the selectors)", file=sys.stderr)
        build_feature_index(pool)
    if args.out.exists():
        shutil.rmtree(args.out)
    rows = []
    with LocalStack(data_dir=args.out / "server", pools_dir=args.world / "pools", log_dir=args.out / "logs") as stack:
        url = stack.start_server()
        stack.start_worker()
        print(f"server {url} (docs at {url}/docs), worker started; logs in {args.out / 'logs'}", file=sys.stderr)
        with PladaClient(url, token=stack.token("publish"), cache_dir=args.out / "client-cache") as client:
            jobs = {}
            for task in args.tasks:
                tdir = args.world / "tasks" / task
                classes = json.loads((tdir / "task.json").read_text())["classes"]
                spec = TaskSpec(
                    name=task,
                    classes=classes,
                    pool_id=pool.name,
                    keep=args.keep,
                    selector={"name": args.selector, "proxy_epochs": args.proxy_epochs}
                    if args.selector == "auto"
                    else {
                        "name": args.selector,
                        "safety_net_share": args.safety_net_share,
                        "safety_net_alpha": args.safety_net_alpha,
                    },
                    teacher={"epochs": args.teacher_epochs},
                )
                jobs[task] = (client.publish(spec, tdir / "train.npz"), time.perf_counter())
            for task in args.tasks:
                resp, t0 = jobs[task]
                server_progress = stage_progress(f"{task}: server")
                client.wait_job(resp.job.id, on_progress=lambda j, p=server_progress: p(j.progress, j.message[:60]))
                t_server = time.perf_counter()
                payload = client.fetch(task, resp.version, pool=pool)
                data = client.cache.get(payload.sha256 or "") or b""
                info = client.version(task, resp.version)
                tshow = stage_progress(f"{task}: student")

                split = load_eval_split(args.world / "tasks" / task / "test.npz", list(payload.classes))
                m = train_student(
                    payload,
                    pool,
                    args.out / "client" / task,
                    TrainConfig(epochs=args.student_epochs),
                    eval_split=split,
                    payload_bytes=data,
                    progress=tshow,
                )
                sel = info.metrics["selection"]
                rows.append(
                    {
                        "task": task,
                        "keep %": f"{100 * sel['keep_fraction']:.2f}",
                        "kept items": f"{len(payload):,}",
                        "payload bytes": f"{len(data):,}",
                        "selection": sel["label"],
                        "teacher acc (server val)": f"{100 * info.metrics['teacher']['val_accuracy']:.1f}",
                        "predicted acc (server val)": _pct(info.metrics["validation"]["predicted_client_accuracy"]),
                        "student acc (client test)": f"{100 * m['test_accuracy']:.1f}",
                        "server s": f"{info.metrics['timing_s']['total']:.0f}",
                        "client s": f"{m['wall_s']:.0f}",
                        "wall s from publish": f"{time.perf_counter() - t0:.0f}",
                    }
                )
                print(
                    f"{task}: {len(payload):,} items, {len(data):,} bytes, student {100 * m['test_accuracy']:.1f} %"
                    f" (server {t_server - t0:.0f} s)",
                    file=sys.stderr,
                )
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    print()
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=True)))
    print(
        f"\nselector {args.selector}"
        + ("" if args.selector == "auto" else f" + Safety-Net s={args.safety_net_share} α={args.safety_net_alpha}")
        + ", "
        f"keep {args.keep:.0%}, teacher {args.teacher_epochs} epochs, proxy students {args.proxy_epochs} epochs, "
        f"student {args.student_epochs} epochs (smallcnn, CPU); every payload < 1 MB; "
        f"total {time.perf_counter() - t_start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
