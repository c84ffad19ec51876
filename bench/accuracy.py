"""Does plada's selection beat PLADA's per byte? Student accuracy on the client test split of the mini world.

For every task × seed the teacher is trained once (``prepare``); then for each budget (keep fraction or
byte budget) the benchmark builds, through the product's own ``finish``:

- **energy** — the paper's rule alone (lowest energy first);
- **paper (val)** — energy with Safety-Net share s ∈ {0, 0.5, 1} and α ∈ {0, 0.5}, chosen by the proxy
  student's accuracy on the server's validation split (the paper's recipe with its knobs tuned honestly);
- **random** — uniform random pool items, teacher labels;
- **plada auto** — the default: every candidate validated, the best shipped;
- **raw images** — N of the publisher's own images (PNG each, then zstd-19 over all) at the same byte count
  as plada's payload, trained with their true labels for as many samples as the payload student sees.

Each payload then trains a client student exactly as ``plada-client train`` does and is scored on the client
test split, which nothing above has seen. Settings are fixed before any test number is read.

    python bench/accuracy.py --world .cache/world --seeds 0 1 2 --out results.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from plada.client.train import TrainConfig, train_student
from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.records import Prepared
from plada.server.pipeline.run import finish, prepare
from plada.server.pipeline.validate import Candidate
from plada.shared import nn as pnn
from plada.shared.payload import payload_sha256
from plada.shared.pool import Pool, open_pool
from plada.shared.schemas import TaskSpec

PAPER_GRID = [
    Candidate("energy"),
    Candidate("energy", share=0.5, alpha=0.0),
    Candidate("energy", share=0.5, alpha=0.5),
    Candidate("energy", share=1.0, alpha=0.0),
    Candidate("energy", share=1.0, alpha=0.5),
]
BUDGETS = ["keep:0.01", "keep:0.05", "bytes:2000", "bytes:8000"]


def raw_image_bytes(x: np.ndarray) -> int:
    from PIL import Image

    parts = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img if img.ndim == 2 else img[..., 0]).save(buf, format="PNG", optimize=True)
        parts.append(buf.getvalue())
    return len(zstandard.ZstdCompressor(level=19).compress(b"".join(parts)))


def raw_images_baseline(
    x: np.ndarray,
    y: np.ndarray,
    xt: np.ndarray,
    yt: np.ndarray,
    n_bytes: int,
    samples: int,
    epochs: int,
    seed: int,
    shape: tuple[int, int, int],
    device: torch.device,
) -> dict[str, Any]:
    """The most class-balanced prefix of the publisher's images that fits ``n_bytes``, trained on directly."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    order = np.array([p[i] for i in range(max(map(len, per_class))) for p in per_class if i < len(p)])
    lo, hi = 0, min(len(order), 4096)
    while lo < hi:  # largest N whose compressed images fit
        mid = (lo + hi + 1) // 2
        if raw_image_bytes(x[order[:mid]]) <= n_bytes:
            lo = mid
        else:
            hi = mid - 1
    n = lo
    if n == 0:
        return {"n": 0, "acc": 1.0 / len(np.unique(y)), "bytes": 0}
    h, w, c = shape
    model = pnn.create_model("smallcnn", in_chans=c, num_classes=int(y.max()) + 1, seed=seed)
    ep = int(min(2000, max(epochs, math.ceil(samples / n))))
    pnn.fit(
        model, x[order[:n]], y[order[:n]], pnn.FitConfig(epochs=ep, seed=seed), size=(h, w), channels=c, device=device
    )
    acc = pnn.accuracy(model, xt, yt, size=(h, w), channels=c, device=device)
    return {"n": n, "acc": acc, "bytes": raw_image_bytes(x[order[:n]]), "epochs": ep}


def student_accuracy(
    payload: Any,
    data: bytes,
    pool: Pool,
    test: tuple[np.ndarray, np.ndarray],
    epochs: int,
    seed: int,
    device: torch.device,
) -> float:
    with tempfile.TemporaryDirectory() as d:
        m = train_student(
            payload,
            pool,
            Path(d),
            TrainConfig(epochs=epochs, seed=seed, device=str(device)),
            eval_split=test,
            payload_bytes=data,
        )
    return float(m["test_accuracy"])


def run_cell(
    prep: Prepared,
    base: dict[str, Any],
    budget: str,
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
    epochs: int,
    device: torch.device,
) -> dict[str, Any]:
    kind, val = budget.split(":")
    spec = TaskSpec.model_validate(base | ({"keep": float(val)} if kind == "keep" else {"max_bytes": int(val)}))
    t0 = time.perf_counter()
    auto = finish(prep, spec, version=1, config=RunConfig(device=device))
    paper = finish(prep, spec, version=1, config=RunConfig(device=device), candidates=PAPER_GRID)
    by_label = {b.candidate.label: b for b in auto.built}
    picks = {
        "energy": by_label["energy"],
        "paper_val": next(b for b in paper.built if b.candidate.label == paper.metrics["selection"]["label"]),
        "random": by_label["random"],
        "auto": next(b for b in auto.built if b.candidate.label == auto.metrics["selection"]["label"]),
    }
    accs: dict[str, float] = {}
    done: dict[str, float] = {}
    for name, b in picks.items():
        sha = payload_sha256(b.data)
        if sha not in done:
            done[sha] = student_accuracy(b.payload, b.data, prep.pool, test, epochs, seed, device)
        accs[name] = done[sha]
    samples = epochs * len(picks["auto"].payload)
    raw = raw_images_baseline(
        prep.x, prep.y, *test, len(picks["auto"].data), samples, epochs, seed, prep.pool.image_shape, device
    )
    teacher_acc = float("nan")
    if prep.teacher.classify is not None:
        teacher_acc = float((prep.teacher.classify(test[0]).argmax(1) == test[1]).mean())
    return {
        "budget": budget,
        "seed": seed,
        "teacher_test": teacher_acc,
        "teacher_val": prep.teacher.val_accuracy,
        "acc": accs,
        "raw": raw,
        "bytes": {k: len(b.data) for k, b in picks.items()},
        "n_kept": {k: len(b.payload) for k, b in picks.items()},
        "auto_label": picks["auto"].candidate.label,
        "paper_label": picks["paper_val"].candidate.label,
        "predicted": auto.metrics["validation"]["predicted_client_accuracy"],
        "candidates": auto.metrics["validation"]["candidates"],
        "paper_candidates": paper.metrics["validation"]["candidates"],
        "leakage": auto.metrics["leakage"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _ms(v: list[float]) -> str:
    a = np.asarray(v, dtype=np.float64) * 100
    return f"{a.mean():.1f} ± {a.std():.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def _seeds(rs: list[dict[str, Any]]) -> str:
    cpu = sum(1 for r in rs if str(r.get("device", "")).startswith("cpu"))
    return f"{len(rs)}" + (f" ({cpu} on CPU)" if cpu else "")


def summarize(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | budget | seeds | plada bytes (items) | teacher | energy | paper (val) | random | raw images (N) "
        "| **plada auto** | predicted (val) | auto's choice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, int]] = set()
    for r in rows:
        if (r["task"], r["budget"], r["seed"]) in seen:  # a cell re-run after a cut-off run: count it once
            continue
        seen.add((r["task"], r["budget"], r["seed"]))
        cells.setdefault((r["task"], r["budget"]), []).append(r)
    for (task, budget), rs in cells.items():
        col = {k: [r["acc"][k] for r in rs] for k in ("energy", "paper_val", "random", "auto")}
        choices = sorted({r["auto_label"] for r in rs})
        lines.append(
            f"| {task} | {budget} | {_seeds(rs)} | {np.mean([r['bytes']['auto'] for r in rs]):,.0f} "
            f"({np.mean([r['n_kept']['auto'] for r in rs]):,.0f}) | {_ms([r['teacher_test'] for r in rs])} "
            f"| {_ms(col['energy'])} | {_ms(col['paper_val'])} | {_ms(col['random'])} "
            f"| {_ms([r['raw']['acc'] for r in rs])} ({np.mean([r['raw']['n'] for r in rs]):.0f}) "
            f"| **{_ms(col['auto'])}** | {_ms([r['predicted'] for r in rs])} | {'; '.join(choices)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=".cache/world")
    ap.add_argument("--tasks", nargs="+", default=["fashion", "animals", "digits"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=BUDGETS)
    ap.add_argument("--teacher", default="smallcnn", help="teacher arch: smallcnn or probe")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=15)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="append one JSON line per cell here")
    ap.add_argument("--summarize", nargs="+", help="only print the table of these JSON-lines files")
    args = ap.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for f in args.summarize for line in Path(f).read_text().splitlines() if line]
        rows.sort(
            key=lambda r: (args.tasks.index(r["task"]), BUDGETS.index(r["budget"]) if r["budget"] in BUDGETS else 9)
        )
        print(summarize(rows))
        return 0
    pnn.set_threads()
    device = pnn.pick_device(args.device)
    world = Path(args.world)
    pool = open_pool(world / "pools" / "mini-v1")
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    for task in args.tasks:
        tdir = world / "tasks" / task
        with np.load(tdir / "train.npz") as z, np.load(tdir / "test.npz") as t:
            data[task] = (
                json.loads((tdir / "task.json").read_text()),
                z["x"],
                z["y"].astype(np.int64),
                (t["x"], t["y"].astype(np.int64)),
            )
    for seed in args.seeds:  # seed-major: a run cut short still has every task for the first seeds
        for task in args.tasks:
            meta, x, y, test = data[task]
            base = {
                "name": task,
                "classes": meta["classes"],
                "pool_id": pool.pool_id,
                "teacher": {"arch": args.teacher, "epochs": args.teacher_epochs, "seed": seed},
                "selector": {"seed": seed},
            }
            t0 = time.perf_counter()
            prep = prepare(pool, x, y, TaskSpec.model_validate(base | {"keep": 0.01}), config=RunConfig(device=device))
            print(
                f"# {task} seed {seed}: teacher {prep.teacher.arch} val {prep.teacher.val_accuracy:.3f} "
                f"({time.perf_counter() - t0:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
            for budget in args.budgets:
                row = {"task": task, "device": str(device), "teacher_arch": prep.teacher.arch} | run_cell(
                    prep, base, budget, test, seed, args.student_epochs, device
                )
                rows.append(row)
                print(
                    f"#   {budget}: auto {row['acc']['auto']:.3f} ({row['auto_label']}) paper "
                    f"{row['acc']['paper_val']:.3f} energy {row['acc']['energy']:.3f} random "
                    f"{row['acc']['random']:.3f} raw {row['raw']['acc']:.3f} ({row['raw']['n']}) "
                    f"[{row['seconds']}s]",
                    file=sys.stderr,
                    flush=True,
                )
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
