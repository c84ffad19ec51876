"""The paper's pool size on one server, by simulation: publish on synthetic pools of 1.28M and 14.2M items.

No such pool exists here (and none is downloaded), so each size is a synthetic pool (``harness/synthetic.py``):
ImageNet-like keys in 1,000 or 21,841 synset folders, and a feature index drawn from the photo world's
*compressed* index (``plada-server pool compress``: 256 int8 columns), its group means and spread. The
targets are real uploads: a photo-world task's publisher split, embedded by the real backbone. Each step runs
in its own process so that its peak RSS (``getrusage``) is its own:

1. ``--generate``: write the pool and its index (not part of publishing), and encode its definition;
2. ``--publish``: ``prepare`` + ``finish`` with the default spec (teacher auto = probe, selector auto = six
   candidates with probe proxies) at keep 1 %, then ``finish`` again at keep 0.1 % on the same teacher; stage
   times come from the pipeline's own progress messages;
3. ``--client``: what a client does with the result: decode the definition, derive the layout, decode the
   1 % payload.

The index is read from the page cache (it was just written: the "cached index" of the goals). With
``--two-tier`` the rows are drawn full-width from the photo world's full index and written twice: as index
``full`` (1,280 float16 columns: 36 GB at 14.2M, more than this machine's RAM, so its passes read the disk)
and as ``default``, their compression (256 int8 columns), which is how ``pool compress --replace`` leaves a
pool: the survey reads ``default``, the teacher's logits, the domain classifier and the proxies read ``full``.

    python bench/scale.py --photo .cache/photo --work /work/scale --sizes 1281167 14197122 \\
        --out bench/results/scale-cpu.json
    python bench/scale.py --table bench/results/scale-cpu.json
    python bench/scale.py --photo .cache/photo --work /work/scale --sizes 1281167 14197122 --two-tier \
        --out bench/results/scale-two-tier-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/

PAPER_MEAN_1PCT_KB = 147.3  # the paper's Table 2: mean 1 % payload on ImageNet-21K
SIZES = {1_281_167: 1_000, 14_197_122: 21_841}  # ImageNet-1K train, ImageNet-21K (Winter 2021)


def pool_dir(args: argparse.Namespace, n: int) -> Path:
    return args.work / f"synthetic-{n}-{args.source_index}{'-2tier' if args.two_tier else ''}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def generate(args: argparse.Namespace) -> dict[str, Any]:
    from harness.synthetic import synthetic_pool
    from plada.server.pipeline.features import open_feature_index
    from plada.shared.pool import definition_of, encode_definition, open_pool

    photo = open_pool(args.photo / "pools" / "photo-v1")
    src = open_feature_index(photo, args.source_index)
    if src is None:
        raise SystemExit(
            f"the photo world needs a compressed index {args.source_index!r}: "
            f"plada-server pool compress {args.photo / 'pools' / 'photo-v1'} --dim 256"
        )
    n = args.generate
    n_groups = SIZES.get(n, max(1, min(n // 650, 21_841)))
    t0 = time.perf_counter()
    pool = synthetic_pool(
        pool_dir(args, n),
        n,
        n_groups,
        source_rows=np.asarray(src.features),
        source_groups=np.asarray(photo.manifest.groups),
        index_info=src.info,
        backbone=src.root / "backbone.pt",
        projection=src.projection,
        full_rows=np.asarray(src.full.features) if args.two_tier and src.full is not None else None,
        name=f"synthetic-{n}",
        seed=args.seed,
    )
    if args.two_tier and src.full is None:
        raise SystemExit(f"--two-tier needs {args.source_index!r} compressed with its full-width source kept")
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    data = encode_definition(definition_of(pool))
    (pool.root / "definition.bin").write_bytes(data)
    return {
        "n": n,
        "groups": n_groups,
        "generate_s": round(gen_s, 1),
        "definition_bytes": len(data),
        "definition_encode_s": round(time.perf_counter() - t1, 1),
        "index_bytes": (pool.root / "features" / "default" / "features.npy").stat().st_size,
        "full_bytes": full.stat().st_size
        if (full := pool.root / "features" / "full" / "features.npy").is_file()
        else 0,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def upload(args: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The publisher's upload: a photo-world task's publisher split, or (``pool:CxK``) K photos from each of
    the photo pool's first C synset folders, a many-class task of real photos."""
    if args.task.startswith("pool:"):
        from plada.shared.pool import open_pool

        c, per = (int(v) for v in args.task.split(":", 1)[1].split("x"))
        photo = open_pool(args.photo / "pools" / "photo-v1")
        groups = np.asarray(photo.manifest.groups)
        names = list(photo.info["group_names"])[:c]
        idx = np.concatenate([np.flatnonzero(groups == g)[:per] for g in range(c)])
        return names, photo.batch(idx), np.repeat(np.arange(c), per)
    tdir = args.photo / "tasks" / args.task
    classes = json.loads((tdir / "task.json").read_text())["classes"]
    with np.load(tdir / "train.npz", allow_pickle=False) as z:
        return classes, z["x"], z["y"].astype(np.int64)


def publish(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from plada.server.pipeline.config import RunConfig
    from plada.server.pipeline.run import finish, prepare
    from plada.shared.pool import open_pool
    from plada.shared.schemas import TaskSpec

    torch.set_num_threads(os.cpu_count() or 1)
    pool = open_pool(args.publish)
    classes, x, y = upload(args)
    config = RunConfig(block_bytes=args.block_mb << 20, logits_ram_bytes=args.logits_ram_mb << 20)
    rss0 = rss_mb()
    events: list[tuple[float, str]] = []
    t0 = time.perf_counter()

    def progress(_f: float, msg: str) -> None:
        events.append((time.perf_counter() - t0, msg))
        if args.verbose:
            print(
                f"{events[-1][0]:8.1f} s  rss {rss_mb():7.0f} MB  peak {peak_rss_mb():7.0f} MB  {msg}", file=sys.stderr
            )

    name = args.task.replace(":", "-") if not args.task.startswith("pool:") else "pool-synsets"
    spec = TaskSpec(name=name, classes=classes, pool_id=pool.name, keep=args.keep)
    prep = prepare(pool, x, y, spec, config=config, progress=progress)
    t_prep = time.perf_counter() - t0
    res = finish(prep, spec, version=1, config=config, progress=progress)
    total = time.perf_counter() - t0
    # what the selections read from the full-width tier by gathers (not passes): the kNN rows rescored and the
    # rows given a diversity stratum, at the main keep
    gathered = {
        "knn_rescored": int(sum(np.isfinite(f).sum() for f in prep.fine.values())),
        "strata_assigned": int((prep.strata >= 0).sum()) if prep.strata is not None else 0,
    }
    t2 = time.perf_counter()
    spec01 = spec.model_copy(update={"keep": args.keep / 10})
    res01 = finish(prep, spec01, version=1, config=config)
    t01 = time.perf_counter() - t2

    def at(prefix: str) -> float:
        return next((t for t, m in events if m.startswith(prefix)), float("nan"))

    stages = {
        "upload_embed_probe_fit": at("teacher: probe trained"),
        "pool_logits": at("pool scored") - at("teacher: probe trained"),
        "leakage_audit_domain": t_prep - at("pool scored"),
        "select_encode": res.metrics["timing_s"]["select_encode"],
        "validation": res.metrics["timing_s"]["validation"],
        "report_preview": total
        - t_prep
        - res.metrics["timing_s"]["select_encode"]
        - res.metrics["timing_s"]["validation"],
    }
    out_dir = args.publish / "payloads"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "keep-main.plada").write_bytes(res.data)
    m, m01 = res.metrics, res01.metrics
    n = len(pool)
    return {
        "n": n,
        "task": args.task,
        "classes": len(classes),
        "uploads": len(x),
        "block_mb": args.block_mb,
        "publish_s": round(total, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "rss_before_mb": round(rss0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "gathered_rows": gathered,
        "chosen": m["validation"]["chosen"],
        "predicted": m["validation"]["predicted_client_accuracy"],
        "teacher_val": m["teacher"]["val_accuracy"],
        "leakage": {k: m["leakage"][k] for k in ("exact_duplicates", "near_duplicates", "method")},
        "keep_main": {
            "keep": args.keep,
            "items": m["selection"]["n_kept"],
            "bytes": m["payload"]["bytes"],
            "paper_codec_bytes": m["payload"]["paper_codec_bytes"],
        },
        "keep_tenth": {
            "keep": args.keep / 10,
            "items": m01["selection"]["n_kept"],
            "bytes": m01["payload"]["bytes"],
            "paper_codec_bytes": m01["payload"]["paper_codec_bytes"],
            "finish_s": round(t01, 1),
        },
    }


def client(args: argparse.Namespace) -> dict[str, Any]:
    from plada.shared.payload import decode_payload
    from plada.shared.pool import PoolLayout, decode_definition

    root = args.client
    rss0 = rss_mb()
    t0 = time.perf_counter()
    d = decode_definition((root / "definition.bin").read_bytes())
    t1 = time.perf_counter()
    groups = d.manifest.clusters if d.manifest.clusters is not None else d.manifest.groups
    assert groups is not None
    layout = PoolLayout.from_groups(np.asarray(groups))
    t2 = time.perf_counter()
    data = (root / "payloads" / "keep-main.plada").read_bytes()
    p = decode_payload(data, layout=layout)
    t3 = time.perf_counter()
    assert len(p) > 0 and p.n_pool == len(d.manifest)
    return {
        "n": len(d.manifest),
        "definition_decode_s": round(t1 - t0, 2),
        "layout_s": round(t2 - t1, 2),
        "payload_decode_s": round(t3 - t2, 3),
        "items": len(p),
        "rss_before_mb": round(rss0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _child(flag: str, value: Any, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, flag, str(value), "--photo", str(args.photo), "--work", str(args.work)]
    cmd += ["--task", args.task, "--block-mb", str(args.block_mb), "--logits-ram-mb", str(args.logits_ram_mb)]
    cmd += ["--source-index", args.source_index, "--keep", str(args.keep)] + (["--two-tier"] if args.two_tier else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{flag} {value} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| pool items (groups) | index on disk (full 1,280-d fp16) | publish s | stages s (embed+fit / logits / "
        "audit / select / validate / report) | peak RSS | keep: items, bytes (B/item) | paper codec | "
        "keep ÷ 10: bytes (B/item) | client: definition, decode, peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, p, c = r["generate"], r["publish"], r["client"]
        st = p["stages_s"]
        k1, k01 = p["keep_main"], p["keep_tenth"]
        out.append(
            f"| {g['n']:,} ({g['groups']:,}) | {g['index_bytes'] / 2**30:.2f} GiB "
            f"({g['n'] * 1280 * 2 / 2**30:.1f} GiB{', kept' if g.get('full_bytes') else ''}) | "
            f"**{p['publish_s']:.0f}** | "
            f"{st['upload_embed_probe_fit']:.0f} / {st['pool_logits']:.0f} / {st['leakage_audit_domain']:.0f} / "
            f"{st['select_encode']:.0f} / {st['validation']:.0f} / {st['report_preview']:.0f} | "
            f"**{p['peak_rss_mb'] / 1024:.2f} GiB** | {100 * k1['keep']:g} %: {k1['items']:,}, "
            f"{k1['bytes'] / 1024:.1f} KiB "
            f"({k1['bytes'] / k1['items']:.2f}) | {k1['paper_codec_bytes'] / 1024:.1f} KiB | "
            f"{100 * k01['keep']:g} %: {k01['bytes'] / 1024:.1f} KiB ({k01['bytes'] / k01['items']:.2f}) | "
            f"{g['definition_bytes'] / 2**20:.0f} MiB in {c['definition_decode_s']:.1f} s, "
            f"{c['payload_decode_s'] * 1000:.0f} ms, {c['peak_rss_mb'] / 1024:.2f} GiB |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=Path(".cache/photo"), help="the built photo world")
    ap.add_argument("--source-index", default="default-pca256", help="the photo pool's compressed index")
    ap.add_argument("--work", type=Path, default=Path(".cache/scale"), help="where synthetic pools are written")
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument(
        "--task",
        default="imagenette10",
        help="the photo-world task whose publisher split is uploaded, or pool:CxK (K photos of C pool synsets)",
    )
    ap.add_argument("--keep", type=float, default=0.01, help="the budget (a second run at a tenth of it follows)")
    ap.add_argument("--block-mb", type=int, default=64, help="RunConfig.block_bytes (MiB)")
    ap.add_argument("--logits-ram-mb", type=int, default=512, help="RunConfig.logits_ram_bytes (MiB)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (rows are appended to an existing file)")
    ap.add_argument("--seed", type=int, default=0, help="of the synthetic pool")
    ap.add_argument(
        "--two-tier",
        action="store_true",
        help="also write the full-width float16 rows (index 'full'): the linear passes read them",
    )
    ap.add_argument("--verbose", action="store_true", help="--publish: RSS at every progress message")
    ap.add_argument(
        "--reuse", action="store_true", help="publish on a pool this bench generated before (its index read once)"
    )
    ap.add_argument("--table", type=Path, default=None, help="print the table of a results file and exit")
    ap.add_argument("--generate", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--publish", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--client", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for flag, fn in (("generate", generate), ("publish", publish), ("client", client)):
        if getattr(args, flag) is not None:
            print(json.dumps(fn(args)))
            return 0
    if args.table:
        print(table(json.loads(args.table.read_text())["rows"]))
        return 0
    rows = []
    for n in args.sizes:
        pdir = pool_dir(args, n)
        if args.reuse and (pdir / "generate.json").is_file():
            gen = json.loads((pdir / "generate.json").read_text())
            # the cached index of the goals; a kept full tier too where it fits in half the RAM (1.28M: 3.3 GB)
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            for tier in ("default", "full"):
                path = pdir / "features" / tier / "features.npy"
                if path.is_file() and (tier == "default" or path.stat().st_size < ram / 2):
                    with open(path, "rb") as f:
                        while f.read(64 << 20):
                            pass
        else:
            print(f"# {n:,} items: generating", file=sys.stderr, flush=True)
            gen = _child("--generate", n, args)
            (pdir / "generate.json").write_text(json.dumps(gen))
        print(f"# {n:,}: {json.dumps(gen)}\n# publishing", file=sys.stderr, flush=True)
        pub = _child("--publish", pdir, args)
        print(f"# {json.dumps(pub)}", file=sys.stderr, flush=True)
        cli = _child("--client", pdir, args)
        print(f"# {json.dumps(cli)}", file=sys.stderr, flush=True)
        # it measured what it names: the payload has 1 % of the pool, the client decoded all of it
        assert pub["keep_main"]["items"] == cli["items"] == round(args.keep * n), (pub["keep_main"], cli["items"])
        rows.append(
            {
                "source_index": args.source_index,
                "two_tier": args.two_tier,
                "generate": gen,
                "publish": pub,
                "client": cli,
            }
        )
    doc = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "paper_mean_1pct_kb": PAPER_MEAN_1PCT_KB, "rows": []}
    if args.out:
        if args.out.is_file():
            doc = json.loads(args.out.read_text())
        doc["rows"] += rows
        args.out.write_text(json.dumps(doc, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
