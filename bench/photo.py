"""plada on real photos: the photo world (``shared/photo-world``), pretrained features end to end.

For every task × seed the server side runs through the product's own ``prepare``/``finish`` with the default
spec (teacher ``auto`` = a calibrated linear probe on the pool's pretrained EfficientNet-Lite0 index,
selector ``auto`` with probe proxy students); then for each budget it reports, on the **client test split**:

- **teacher** — the probe teacher (and, beside it, scikit-learn's L-BFGS logistic regression on the same
  features: the reference the probe must match; both on server validation and on test);
- **energy** — the paper's rule alone; **paper (val)** — energy with Safety-Net α ∈ {0.5, −0.2} or none,
  chosen on the server's validation split; **random**; **auto** — what plada ships; **predicted** — auto's
  proxy accuracy on server validation (what the version's metrics say the client will get);
- the client students: **head** (``plada-client train --head-only``: linear probe on frozen features of the
  kept items, teacher labels) for every recipe, and **full** (``--pretrained``: every layer fine-tuned,
  AdamW 1e-3 cosine) for auto where ``--full-epochs`` > 0.

Settings are the product's defaults, fixed before any test number was read; nothing here is chosen on test.

    python bench/photo.py --source ../shared/photo-world --world .cache/photo --seeds 0 1 --out photo.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plada.client.train import TrainConfig, train_student
from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.features import build_pretrained_index, open_feature_index
from plada.server.pipeline.records import Built
from plada.server.pipeline.run import finish, prepare
from plada.server.pipeline.validate import Candidate
from plada.shared.datasets.photo import build_photo_world
from plada.shared.probe import fit_linear_probe
from plada.shared.schemas import TaskSpec

PAPER = [Candidate("energy"), Candidate("energy", share=0.5, alpha=0.5), Candidate("energy", share=0.5, alpha=-0.2)]
BUDGETS = ["keep:0.05", "keep:0.01", "bytes:8000"]


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["x"], z["y"].astype(np.int64)


def sklearn_probe(ftr: np.ndarray, ytr: np.ndarray, fev: list[np.ndarray], yev: list[np.ndarray]) -> list[float]:
    """The reference: scikit-learn's L-BFGS multinomial logistic regression (C = 1) on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(ftr)
    lr = LogisticRegression(max_iter=3000).fit(sc.transform(ftr), ytr)
    return [float((lr.predict(sc.transform(f)) == y).mean()) for f, y in zip(fev, yev, strict=True)]


def head_student(pool_f: np.ndarray, b: Built, k: int, ft: np.ndarray, yt: np.ndarray, seed: int) -> float:
    """What ``plada-client train --head-only`` computes: a probe on the kept items' frozen features."""
    idx = np.asarray(b.payload.indices)
    probe = fit_linear_probe(np.asarray(pool_f[idx], dtype=np.float32), b.payload.labels, k, seed=seed)
    return probe.accuracy(ft, yt)


def full_student(b: Built, pool: Any, test: tuple[np.ndarray, np.ndarray], epochs: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        m = train_student(
            b.payload,
            pool,
            Path(d),
            TrainConfig(arch="efficientnet_lite0", pretrained=True, epochs=epochs, seed=seed, batch_size=64),
            eval_split=test,
            payload_bytes=b.data,
        )
    return float(m["test_accuracy"])


def _pm(vals: list[float]) -> str:
    v = 100 * np.asarray(vals, dtype=np.float64)
    return f"{v.mean():.1f}" + (f" ± {v.std():.1f}" if len(v) > 1 else "")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per task × budget, mean ± std over the seeds present (client test split unless noted)."""
    out = [
        "| task | budget | seeds | bytes (items) | teacher val / test | sklearn LR val / test | energy | paper (val) "
        "| random | **auto** (head) | predicted (val) | full fine-tune | auto's choice (seed 0) | publish s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys: list[tuple[str, str]] = []
    for r in rows:
        if (r["task"], r["budget"]) not in keys:
            keys.append((r["task"], r["budget"]))
    for task, budget in keys:
        rs = [r for r in rows if r["task"] == task and r["budget"] == budget]
        full = [r["full"] for r in rs if "full" in r]
        first = min(rs, key=lambda r: r["seed"])
        out.append(
            f"| {task} | {budget} | {len(rs)} | {np.mean([r['bytes'] for r in rs]):,.0f} "
            f"({np.mean([r['n_kept'] for r in rs]):,.0f}) | {_pm([r['teacher_val'] for r in rs])} / "
            f"{_pm([r['teacher_test'] for r in rs])} | {_pm([r['sklearn_val'] for r in rs])} / "
            f"{_pm([r['sklearn_test'] for r in rs])} | {_pm([r['energy'] for r in rs])} | "
            f"{_pm([r['paper'] for r in rs])} | {_pm([r['random'] for r in rs])} | "
            f"**{_pm([r['auto'] for r in rs])}** | "
            f"{_pm([r['predicted'] for r in rs])} | {_pm(full) + f' ({len(full)})' if full else '-'} | "
            f"{first['auto_choice']} | {np.mean([r['publish_s'] for r in rs]):.0f} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", nargs="+", type=Path, help="print the markdown table of these JSONL files and exit")
    ap.add_argument("--source", type=Path, default=Path("../shared/photo-world"))
    ap.add_argument("--world", type=Path, default=Path(".cache/photo"))
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--budgets", nargs="+", default=BUDGETS)
    ap.add_argument("--full-epochs", type=int, default=0, help="also fine-tune a pretrained student on auto's items")
    ap.add_argument("--full-budgets", nargs="+", default=["keep:0.05"])
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per cell")
    ap.add_argument(
        "--index",
        default=None,
        help="the server's feature index (e.g. a compressed one); clients keep the full features of 'default'",
    )
    args = ap.parse_args()
    if args.table:
        rows = [json.loads(line) for f in args.table for line in f.read_text().splitlines() if line.startswith("{")]
        print(table(rows))
        return 0
    pool = build_photo_world(args.source, args.world, log=lambda m: print(m, file=sys.stderr))
    index = open_feature_index(pool)
    if index is None or not index.pretrained:
        print("embedding pool photo-v1 with the pretrained backbone (once)", file=sys.stderr)
        index = build_pretrained_index(pool)
    print(
        f"# index: {index.info['arch']} @ {index.info['image_shape'][0]} px, {index.info.get('images_per_s')} img/s "
        f"({index.info.get('runtime')}, {index.info.get('device')})",
        file=sys.stderr,
    )
    server_index = open_feature_index(pool, args.index) if args.index else index
    assert server_index is not None
    # a compressed index with its full-width source on disk publishes on two tiers (docs/benchmarks.md)
    served = (args.index or "default") + ("+full" if server_index.full is not None else "")
    tasks = args.tasks or sorted(p.name for p in (args.world / "tasks").iterdir() if (p / "train.npz").is_file())
    device = torch.device("cpu")
    for task in tasks:
        tdir = args.world / "tasks" / task
        classes = json.loads((tdir / "task.json").read_text())["classes"]
        x, y = _load(tdir / "train.npz")
        xt, yt = _load(tdir / "test.npz")
        t = time.perf_counter()
        ft = index.embed(xt, device=device)  # the client's features: full, whatever the server's index
        fx = index.embed(x, device=device)
        print(f"# {task}: test split embedded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        k = len(classes)
        for seed in args.seeds:
            base = TaskSpec(
                name=task,
                classes=classes,
                pool_id=pool.name,
                selector={"seed": seed},
                teacher={"seed": seed},
            )
            t0 = time.perf_counter()
            prep = prepare(pool, x, y, base, config=RunConfig(device=device), index_name=args.index)
            assert prep.teacher.classify is not None
            teacher_test = float((prep.teacher.classify(xt).argmax(1) == yt).mean())
            sk_val, sk_test = sklearn_probe(fx[prep.tr], y[prep.tr], [fx[prep.va], ft], [y[prep.va], yt])
            for bi, budget in enumerate(args.budgets):
                kind, val = budget.split(":")
                spec = base.model_copy(
                    update={"keep": float(val), "max_bytes": None}
                    if kind == "keep"
                    else {"keep": None, "max_bytes": int(val)}
                )
                t1 = time.perf_counter()
                res = finish(prep, spec, version=1, config=RunConfig(device=device))
                publish_s = (prep.seconds if bi == 0 else 0.0) + time.perf_counter() - t1
                paper = finish(prep, spec, version=1, config=RunConfig(device=device), candidates=PAPER)
                built = {b.candidate.label: b for b in res.built + paper.built}
                m = res.metrics
                chosen = m["validation"]["chosen"]
                heads = {lab: head_student(index.features, b, k, ft, yt, seed) for lab, b in built.items()}
                row: dict[str, Any] = {
                    "index": served,
                    "task": task,
                    "seed": seed,
                    "budget": budget,
                    "teacher_val": prep.teacher.val_accuracy,
                    "teacher_test": teacher_test,
                    "sklearn_val": sk_val,
                    "sklearn_test": sk_test,
                    "energy": heads["energy"],
                    "paper_val_choice": paper.metrics["validation"]["chosen"],
                    "paper": heads[paper.metrics["validation"]["chosen"]],
                    "random": heads["random"],
                    "auto_choice": chosen,
                    "auto": heads[chosen],
                    "predicted": m["validation"]["predicted_client_accuracy"],
                    "bytes": m["payload"]["bytes"],
                    "paper_bytes": paper.metrics["payload"]["bytes"],
                    "n_kept": m["selection"]["n_kept"],
                    "publish_s": round(publish_s, 1),
                    "warnings": m["warnings"],
                    "candidates_val": {c["label"]: c["val_accuracy"] for c in m["validation"]["candidates"]},
                    "candidates_test_head": heads,
                    "leakage": {k2: m["leakage"][k2] for k2 in ("exact_duplicates", "near_duplicates", "method")},
                }
                if args.full_epochs and budget in args.full_budgets:
                    t2 = time.perf_counter()
                    row["full"] = full_student(built[chosen], pool, (xt, yt), args.full_epochs, seed)
                    row["full_epochs"] = args.full_epochs
                    row["full_s"] = round(time.perf_counter() - t2, 1)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
            print(f"# {task} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
