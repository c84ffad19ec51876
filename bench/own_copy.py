"""A client's own copy of the pool: attach it, check it, train on it (docs/benchmarks.md, "A client's own copy").

On the photo world's pool the server publishes imagenette10, flowers5 and dtd10 with the default spec at keep
5 % (seed 0, settings chosen on its validation split). Client copies are made from the pool folder: (a)
identical, (b) 1 % of files deleted, (c) every file re-encoded as JPEG q75, (d) downsampled to 32 px PNG, (e)
flat ``<group>_<name>`` files and the same items as WebDataset tars, (f) Parquet (the hubs' image struct, file
names only), (g) 1 % of files replaced by other pool pictures under the same names. For each: the time to
make the copy and to attach it, whether the coverage report is exactly right (matched/missing against what
the maker did), and per task the head-only client student (``train --head-only``) on the client test split,
with the payload's coverage. The fingerprint's distances (same picture vs. another) are measured on 2,000
random items. ``--synthetic N`` times listing + matching a tree of N empty files named like ImageNet and
sizes a definition of N items.

    python bench/own_copy.py --source ../shared/photo-world --world .cache/photo --out own_copy.json
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/

from harness import copies
from plada.client.train import TrainConfig, train_student
from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.run import finish, prepare
from plada.shared.datasets.photo import build_photo_world
from plada.shared.pool import (
    PoolDefinition,
    PoolManifest,
    attach,
    decode_definition,
    definition_of,
    encode_definition,
    fingerprint_pool,
    open_pool,
)
from plada.shared.pool.attach import DIFFERENT
from plada.shared.pool.fingerprint import distance, file_fingerprint
from plada.shared.schemas import TaskSpec

COPIES = {
    "a identical": copies.identical,
    "b 1 % deleted": lambda s, o: copies.delete_fraction(s, o, 0.01, seed=0),
    "c JPEG q75": lambda s, o: copies.reencode_jpeg(s, o, 75),
    "d 32 px PNG": lambda s, o: copies.downsample_png(s, o, 32),
    "e flat files": copies.flat,
    "e WebDataset tars": lambda s, o: copies.webdataset(s, o, per_shard=5000),
    "f Parquet": lambda s, o: copies.parquet(s, o, per_file=10_000, row_group=1000),
    "g 1 % other pictures": lambda s, o: copies.replace_fraction(s, o, 0.01, seed=0),
}


def calibrate(pool: Any, n: int = 2000) -> dict[str, Any]:
    """Fingerprint distances: the same picture re-encoded (q75) or downsampled (32 px), and another picture."""
    from PIL import Image

    fps = np.load(pool.root / "fingerprints.npy")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(pool), n, replace=False)
    same: dict[str, list[int]] = {"q75": [], "32px": []}
    for i in idx:
        im = Image.open(io.BytesIO(pool.item_bytes(int(i)))).convert("RGB")
        for name, (fmt, side) in {"q75": ("JPEG", None), "32px": ("PNG", 32)}.items():
            buf = io.BytesIO()
            (im.resize((side, side), Image.Resampling.LANCZOS) if side else im).save(buf, fmt, quality=75)
            same[name].append(int(distance(file_fingerprint(buf.getvalue()), fps[i])))
    a, b = rng.integers(0, len(pool), 200_000), rng.integers(0, len(pool), 200_000)
    other = distance(fps[a[a != b]], fps[b[a != b]])
    return {
        "same_max": {k: max(v) for k, v in same.items()},
        "same_hist": {k: np.bincount(v).tolist() for k, v in same.items()},
        "other_min": int(other.min()),
        "other_p001": float(np.percentile(other, 0.1)),
        "other_pairs": len(other),
    }


def synthetic(n: int, root: Path) -> dict[str, Any]:
    """List + match a tree of ``n`` empty files named like ImageNet's train split; size an n-item definition."""
    groups = max(1, n // 1281)
    keys = [f"n{g:08d}/n{g:08d}_{i}.JPEG" for g in range(groups) for i in range(n // groups)]
    t = time.perf_counter()
    for g in range(groups):
        (root / f"n{g:08d}").mkdir(parents=True, exist_ok=True)
    for k in keys:
        (root / k).touch()
    make_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    m = PoolManifest(
        name="synthetic",
        keys=keys,
        hashes=rng.integers(0, 256, (len(keys), 16), dtype=np.uint8),
        groups=np.repeat(np.arange(groups, dtype=np.int32), n // groups),
    )
    d = PoolDefinition(
        manifest=m,
        image_shape=(224, 224, 3),
        hash_kind="file",
        fingerprints=rng.integers(0, 256, (len(keys), 8), dtype=np.uint8),
        group_names=tuple(f"n{g:08d}" for g in range(groups)),
    )
    t = time.perf_counter()
    data = encode_definition(d)
    enc_s = time.perf_counter() - t
    t = time.perf_counter()
    decode_definition(data)
    dec_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = attach(d, root, root.parent / "synthetic-att")
    return {
        "items": len(keys),
        "make_tree_s": round(make_s, 1),
        "attach_s": round(time.perf_counter() - t, 1),
        "list_s": rep.list_s,
        "match_s": rep.match_s,
        "matched": rep.matched,
        "definition_bytes": len(data),
        "bytes_per_item": round(len(data) / len(keys), 2),
        "encode_s": round(enc_s, 1),
        "decode_s": round(dec_s, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path("../shared/photo-world"))
    ap.add_argument("--world", type=Path, default=Path(".cache/photo"))
    ap.add_argument("--copies", nargs="+", default=list(COPIES))
    ap.add_argument("--synthetic", type=int, default=0, help="also time a synthetic tree of this many files")
    ap.add_argument("--scratch", type=Path, default=None, help="where copies are made (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    pool = build_photo_world(args.source, args.world, log=log)
    if not (pool.root / "fingerprints.npy").is_file():
        fingerprint_pool(pool)
    result: dict[str, Any] = {"calibration": calibrate(pool)}
    log(f"calibration: {result['calibration']}")
    d = definition_of(pool)
    data = encode_definition(d)
    result["definition"] = {"items": len(d), "bytes": len(data), "bytes_per_item": round(len(data) / len(d), 2)}
    device = torch.device("cpu")
    tasks = sorted(p.name for p in (args.world / "tasks").iterdir() if (p / "train.npz").is_file())
    published = {}
    for task in tasks:
        tdir = args.world / "tasks" / task
        classes = json.loads((tdir / "task.json").read_text())["classes"]
        with np.load(tdir / "train.npz") as z:
            x, y = z["x"], z["y"].astype(np.int64)
        with np.load(tdir / "test.npz") as z:
            test = (z["x"], z["y"].astype(np.int64))
        spec = TaskSpec(name=task, classes=classes, pool_id=pool.name, keep=0.05)
        prep = prepare(pool, x, y, spec, config=RunConfig(device=device))
        res = finish(prep, spec, version=1, config=RunConfig(device=device))
        published[task] = (res.payload, test)
        log(f"{task}: published {len(res.payload)} items ({res.metrics['validation']['chosen']})")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="own-copy-"))
    src = Path(pool.info["source"])
    for name in args.copies:
        where = scratch / name.replace(" ", "_").replace("%", "pct")
        shutil.rmtree(where, ignore_errors=True)
        t = time.perf_counter()
        affected = set(COPIES[name](src, where / "copy"))
        make_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = attach(d, where / "copy", where / "att")
        attach_s = time.perf_counter() - t
        deleted = "deleted" in name
        exact_report = rep.matched == len(d) - (len(affected) if deleted else 0) and rep.extra == 0
        exact_report = exact_report and rep.missing == (len(affected) if deleted else 0)
        att = open_pool(where / "att")
        row: dict[str, Any] = {
            "copy": name,
            "make_s": round(make_s, 1),
            "attach_s": round(attach_s, 2),
            "matched": rep.matched,
            "missing": rep.missing,
            "extra": rep.extra,
            "rules": rep.rules,
            "report_exact": exact_report,
            "tasks": {},
        }
        for task, (payload, test) in published.items():
            cfg = TrainConfig(head_only=True, seed=0, feature_cache=str(where / "features"), min_coverage=0.0)
            m = train_student(payload, att, where / "runs" / task, cfg, eval_split=test)
            cov = m["coverage"]
            cell = {
                "acc": m["test_accuracy"],
                "coverage": {k: cov[k] for k in ("used", "total", "exact", "reencoded", "different", "missing")},
            }
            if affected and not deleted:  # (g): how many of the replaced items the payload uses were excluded
                used_keys = {str(att.manifest.keys[int(i)]) for i in payload.indices}
                hit = used_keys & affected
                st = att.check(payload.indices)
                excluded = {str(att.manifest.keys[int(i)]) for i in payload.indices[st == DIFFERENT]}
                cell["replaced_used"] = len(hit)
                cell["replaced_excluded"] = len(hit & excluded)
                cell["wrongly_excluded"] = len(excluded - hit)
            row["tasks"][task] = cell
            log(f"{name} {task}: {cell}")
        result.setdefault("copies", []).append(row)
        shutil.rmtree(where / "copy", ignore_errors=True)
    if args.synthetic:
        result["synthetic"] = synthetic(args.synthetic, scratch / "synthetic" / "tree")
        log(f"synthetic: {result['synthetic']}")
    shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(table(result))
    return 0


def table(result: dict[str, Any]) -> str:
    tasks = sorted(next(iter(result["copies"]))["tasks"])
    lines = [
        "| copy | attach s | matched / missing / extra | report exact | "
        + " | ".join(f"{t} student % (used/total; re-enc, diff)" for t in tasks)
        + " |",
        "|---|---:|---|---|" + "---:|" * len(tasks),
    ]
    for r in result["copies"]:
        cells = []
        for t in tasks:
            c = r["tasks"][t]
            cov = c["coverage"]
            cells.append(f"{100 * c['acc']:.1f} ({cov['used']}/{cov['total']}; {cov['reencoded']}, {cov['different']})")
        lines.append(
            f"| {r['copy']} | {r['attach_s']} | {r['matched']:,} / {r['missing']:,} / {r['extra']:,} | "
            f"{'yes' if r['report_exact'] else 'NO'} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
