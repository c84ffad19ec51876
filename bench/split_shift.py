"""Are a task's publisher split and client test split drawn from one distribution?

The server predicts client accuracy from its own validation split (part of the publisher's upload). That can
only be right when the client's test images look like the publisher's. This measures it on the pool's
pretrained features, per task, with scikit-learn's L-BFGS logistic regression on standardised features:

- **pub CV** — 5-fold cross-validated accuracy inside the publisher split (what any server-side estimate sees);
- **pub → test** — trained on the whole publisher split, scored on the test split (what the client sees);
- **test CV** and **test → pub** — the same the other way round: is the test half harder in itself, or different?
- **pub-vs-test AUC** — a classifier told to separate publisher from test images (5-fold CV ROC AUC; 0.5 = one
  distribution).

It reads the test split, so it chooses nothing: it explains a number, it tunes none.

    python bench/split_shift.py --world .cache/photo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from plada.server.pipeline.features import open_feature_index
from plada.shared.pool import open_pool


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["x"], z["y"].astype(np.int64)


def main() -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=Path(".cache/photo"))
    ap.add_argument("--pool", default="photo-v1")
    ap.add_argument("--tasks", nargs="+", default=None)
    args = ap.parse_args()
    index = open_feature_index(open_pool(args.world / "pools" / args.pool))
    if index is None or not index.pretrained:
        print("split_shift: no pretrained index; run 'plada-server pool embed' on the pool first", file=sys.stderr)
        return 1
    tasks = args.tasks or sorted(p.name for p in (args.world / "tasks").iterdir() if (p / "test.npz").is_file())
    print("| task | pub / test images | pub CV | pub → test | test CV | test → pub | pub-vs-test AUC |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        tdir = args.world / "tasks" / task
        (x, y), (xt, yt) = _load(tdir / "train.npz"), _load(tdir / "test.npz")
        f, ft = (index.embed(a, device=torch.device("cpu")) for a in (x, xt))

        def model() -> object:
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))

        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        pub_cv = float(cross_val_score(model(), f, y, cv=folds).mean())
        test_cv = float(cross_val_score(model(), ft, yt, cv=folds).mean())
        pub_test = float((model().fit(f, y).predict(ft) == yt).mean())  # type: ignore[attr-defined]
        test_pub = float((model().fit(ft, yt).predict(f) == y).mean())  # type: ignore[attr-defined]
        both = np.concatenate([f, ft])
        side = np.r_[np.zeros(len(f)), np.ones(len(ft))]
        prob = cross_val_predict(model(), both, side, cv=folds, method="predict_proba")[:, 1]
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(side, prob))
        row = {"task": task, "pub_cv": pub_cv, "pub_test": pub_test, "test_cv": test_cv, "test_pub": test_pub}
        print(json.dumps(row | {"auc": auc}), file=sys.stderr)
        print(
            f"| {task} | {len(f):,} / {len(ft):,} | {100 * pub_cv:.1f} | {100 * pub_test:.1f} | {100 * test_cv:.1f} "
            f"| {100 * test_pub:.1f} | {auc:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
