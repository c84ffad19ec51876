"""Why the compressed index keeps its full-width source: how much of the full rows each pass needs.

Two measurements on the photo world's pool (``.cache/photo``, built by ``bench/photo.py``):

- ``--agreement``: for each task, a probe teacher fitted on the publisher split's full features, applied to
  the pool's full rows and to each reduced version of them (the compressed indexes as the pipeline reads them,
  lifted; per-column int8 and int4 of all 1,280 columns); the share of pool items whose argmax label agrees,
  and the relative reconstruction error. No test data is read.
- ``--write BITS``: an uncompressed-format index ``default-int<BITS>sim`` whose rows are the full rows after
  per-column quantisation (dequantised, float16), for ``bench/photo.py --index default-int8sim``: every pass
  on nearly-full rows, the diagnosis that precedes the two-tier design (docs/benchmarks.md).

    python bench/quantised_index.py --agreement
    python bench/quantised_index.py --write 8 && python bench/photo.py --seeds 0 --budgets keep:0.05 keep:0.01 \\
        --index default-int8sim --out photo-int8sim.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from plada.server.pipeline.features import open_feature_index, write_index
from plada.shared.pool import open_pool
from plada.shared.probe import fit_linear_probe

CLIP = 1e-4  # of each column: the quantiser's range is its 0.01 %–99.99 % quantiles


def quantised(rows: np.ndarray, sample: np.ndarray, bits: int) -> np.ndarray:
    """Per-column uniform quantisation to ``bits`` bits and back (float32)."""
    lo, hi = np.quantile(sample, CLIP, 0), np.quantile(sample, 1 - CLIP, 0)
    step = (hi - lo) / (2**bits - 1)
    return np.clip(np.rint((rows - lo) / step), 0, 2**bits - 1) * step + lo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=Path(".cache/photo"))
    ap.add_argument("--agreement", action="store_true")
    ap.add_argument("--write", type=int, choices=(4, 8), default=None)
    args = ap.parse_args()
    pool = open_pool(args.world / "pools" / "photo-v1")
    full = open_feature_index(pool, "default")
    if full is None or full.compressed:
        raise SystemExit("the photo pool needs its full 'default' index: python bench/photo.py builds it")
    rows = np.asarray(full.features, dtype=np.float32)
    if args.write:
        name = f"default-int{args.write}sim"
        q = quantised(rows, rows, args.write).astype(np.float16)
        write_index(pool, name, [q], (full.root / "backbone.pt").read_bytes(), {**full.info, "name": name})
        print(f"wrote index {name}: relative error {np.linalg.norm(q - rows) / np.linalg.norm(rows):.4f}")
    if args.agreement:
        variants: dict[str, np.ndarray] = {f"int{b} (all columns)": quantised(rows, rows, b) for b in (8, 4)}
        for idx in sorted(p.name for p in (pool.root / "features").iterdir()):
            ix = open_feature_index(pool, idx, full=False)
            if ix is not None and ix.compressed and ix.projection is not None:
                variants[f"{idx} (projected)"] = ix.scale * np.asarray(ix.features, np.float32) @ ix.projection.T
        print("| variant | relative error | " + " | ".join(["argmax agreement"] * 3) + " |")
        print("|---|---|---|---|---|")
        agree: dict[str, list[str]] = {k: [] for k in variants}
        for task in ("dtd10", "flowers5", "imagenette10"):
            with np.load(args.world / "tasks" / task / "train.npz", allow_pickle=False) as z:
                x, y = z["x"], z["y"].astype(np.int64)
            probe = fit_linear_probe(full.embed(x, device=torch.device("cpu")), y, int(y.max()) + 1, seed=0)
            ref = probe.logits(rows).argmax(1)
            for k, v in variants.items():
                agree[k].append(f"{task} {100 * (probe.logits(v).argmax(1) == ref).mean():.1f} %")
        for k, v in variants.items():
            print(f"| {k} | {np.linalg.norm(v - rows) / np.linalg.norm(rows):.3f} | " + " | ".join(agree[k]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
