"""CUDA check of the server pipeline and client training (bf16 autocast, channels_last, pinned memory).

Runs on synthetic data so it needs no data set: a pool of N 28×28 images with a bar at one of 10 positions
(class = position) plus distractor noise. Prints one table: throughput per stage and CPU/CUDA agreement.

    python bench/gpu_check.py [--pool-items 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from plada.client.train import TrainConfig, train_student
from plada.server.pipeline.publish import run_pipeline
from plada.server.pipeline.teacher import score_pool
from plada.shared import nn as pnn
from plada.shared.pool import write_array_pool
from plada.shared.schemas import TaskSpec


def bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    rows = 3 + 2 * y
    x[np.arange(n), rows, :] = 255
    x[np.arange(n), rows + 1, :] = 200
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool-items", type=int, default=1_000_000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pnn.pick_device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        px, _ = bars(args.pool_items, 0)
        t = time.perf_counter()
        pool = write_array_pool(Path(tmp) / "pool", "synthetic", px, [f"i{i}" for i in range(len(px))])
        rows.append(("pool write + hash", f"{len(px) / (time.perf_counter() - t):,.0f} img/s", "CPU"))
        tx, ty = bars(5000, 1)
        spec = TaskSpec(
            name="bars",
            classes=[f"row{i}" for i in range(10)],
            pool_id="synthetic",
            keep=0.01,
            selector={"safety_net_share": 1.0},  # per-class quotas: energy alone collapses onto one class
            teacher={"epochs": 10, "batch_size": 256},
        )
        res = run_pipeline(pool, tx, ty, spec, version=1, device=device)
        tm = res.metrics["timing_s"]
        n_tr = res.metrics["teacher"]["n_train"]
        rows.append(
            (
                "teacher training",
                f"{n_tr * 10 / tm['teacher']:,.0f} img/s",
                f"val acc {res.metrics['teacher']['val_accuracy']:.3f}",
            )
        )
        rows.append(
            (
                "pool scoring (load + forward)",
                f"{len(pool) / tm['scoring']:,.0f} img/s",
                f"{tm['scoring']:.1f} s for {len(pool):,}",
            )
        )
        rows.append(
            ("select + encode", f"{tm['selection_encode']:.2f} s", f"{res.metrics['payload']['bytes']:,} bytes")
        )
        # agreement of CUDA bf16 and CPU fp32 labels on the first 8,192 pool items
        from plada.server.pipeline.teacher import Teacher, train_teacher

        teacher = train_teacher(tx, ty, 10, spec.teacher, image_shape=(28, 28, 1), device=device)
        sub = 8192
        z_dev, _ = score_pool(teacher, pool, n=sub)
        cpu_t = Teacher(**{**teacher.__dict__, "device": torch.device("cpu")})
        z_cpu, _ = score_pool(cpu_t, pool, n=sub)
        agree = float((z_dev.argmax(1) == z_cpu.argmax(1)).mean())
        rows.append(
            (
                f"{device.type} vs cpu labels",
                f"{100 * agree:.2f} % agree",
                f"max |Δlogit| {np.abs(z_dev - z_cpu).max():.3f}",
            )
        )
        t = time.perf_counter()
        m = train_student(
            res.payload,
            pool,
            Path(tmp) / "run",
            TrainConfig(epochs=10, batch_size=256, device=str(device)),
            eval_split=bars(2000, 2),
        )
        rows.append(
            (
                "student training",
                f"{len(res.payload) * 10 / m['wall_s']:,.0f} img/s (incl. eval)",
                f"test acc {m['test_accuracy']:.3f}",
            )
        )
    print(f"\nplada GPU check on {name} (torch {torch.__version__})")
    print(f"{'stage':32} | {'throughput':28} | note")
    print("-" * 32 + "-|-" + "-" * 28 + "-|-----")
    for a, b, c in rows:
        print(f"{a:32} | {b:28} | {c}")


if __name__ == "__main__":
    main()
