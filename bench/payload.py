"""Payload body bytes: the paper's codec (bitmap|delta + zstd-19) vs plada's range coders, vs information bounds.

    python bench/payload.py            # a few minutes on 2 CPU cores; prints markdown tables

(a) uniform random selections of K = keep·n items, labels uniform over k = 100 classes:
    bound = log2 C(n, K) + K·H(labels) bits (H = empirical label entropy).
(b) clustered selections from this generator (ImageNet-like, documented so others can rerun it):
    the pool is G contiguous groups (synset folders) of n/G items; a task has k = 100 classes and each class
    has 3 "home" groups drawn at random; 80 % of the K kept items are drawn uniformly from the home groups
    (all of them if they hold fewer), the rest uniformly from the whole pool. A home-group item gets its
    class's label with probability 0.85, else a uniform random label; scattered items get uniform labels.
    n = 1,281,167 uses G = 1,000; n = 14,197,122 uses G = 21,841.
    "generator entropy" is the entropy of this generator's output (the home groups and their classes, then
    every item independently: kept or not, and its label), what no coder can beat on average, however well it
    knows the generator; see generator_entropy_bits. Its ratio to the paper codec is the floor for "coding alone".
(c) the real selections the demo published on the mini world (bench/data/mini-*.plada), re-encoded with
    each codec, in the pool's canonical order, with the pool's manifest-group layout (items coded in
    group order, blocks = groups; mini-v1's groups are its source datasets' own class folders), and in an
    order by embedding cluster computed once per pool. "Order-free bound" is (a)'s bound for the same n, K and
    label counts: what a coder that knows nothing about the pool's structure cannot beat on a random selection.
"Manifest groups" columns: the codec given the pool layout (PoolLayout.from_groups), which is what the server
does for a pool whose manifest has groups; it keeps whichever of the two orders is smaller. In (b) the groups
are contiguous, so group order is pool order and the layout only tells the coder where folders begin.
"""

from __future__ import annotations

import argparse
import time
from math import lgamma, log, log2
from pathlib import Path

import numpy as np

from plada.shared.payload import Payload, decode_payload, encode_payload, read_header
from plada.shared.pool import Pool, PoolLayout

POOLS = {1_281_167: 1_000, 14_197_122: 21_841}
KEEPS = (0.001, 0.005, 0.01, 0.05)
K_CLASSES = 100
HERE = Path(__file__).resolve().parent


def bound_bytes(n: int, labels: np.ndarray, k: int) -> float:
    K = len(labels)
    subset = (lgamma(n + 1) - lgamma(K + 1) - lgamma(n - K + 1)) / log(2)
    c = np.bincount(labels, minlength=k)
    p = c[c > 0] / K
    return (subset - K * float((p * np.log2(p)).sum())) / 8


def payload(idx: np.ndarray, labels: np.ndarray, n: int, k: int) -> Payload:
    return Payload(
        indices=idx,
        labels=labels,
        classes=tuple(f"c{i}" for i in range(k)),
        pool_id="0" * 64,
        n_pool=n,
        task="bench",
        version=1,
    )


def timed(p: Payload, codec: str, layout: PoolLayout | None = None) -> tuple[int, float, str]:
    t = time.perf_counter()
    data = encode_payload(p, codec=codec, layout=layout)
    q = decode_payload(data, layout=layout)
    dt = time.perf_counter() - t
    assert np.array_equal(q.indices, p.indices) and np.array_equal(q.labels, p.labels)
    header, _, blen = read_header(data)
    c = header["codec"]
    if "index" in c:
        return blen, dt, c["index"]
    blocks = "group blocks" if c["block_size"] == 0 else f"block {c['block_size']:,}"
    detail = f"{blocks}, labels {c['labels']}" + (", group order" if "layout" in c else "")
    return blen, dt, detail  # body bytes: the header (class names, pool id) is the same for every codec


def clustered(n: int, groups: int, keep: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    K = round(keep * n)
    bounds = np.linspace(0, n, groups + 1).astype(np.int64)
    homes = rng.choice(groups, size=(K_CLASSES, 3), replace=groups < 3 * K_CLASSES)
    home_items = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in homes.ravel()])
    home_class = np.concatenate([np.full(bounds[g + 1] - bounds[g], c) for c, row in enumerate(homes) for g in row])
    n_home = min(round(0.8 * K), len(home_items))
    pick = rng.choice(len(home_items), size=n_home, replace=False)
    chosen = dict(zip(home_items[pick].tolist(), home_class[pick].tolist(), strict=True))
    while len(chosen) < K:
        for i in rng.choice(n, size=K - len(chosen), replace=False).tolist():
            chosen.setdefault(i, -1)
    idx = np.fromiter(chosen.keys(), dtype=np.int64, count=len(chosen))
    cls = np.fromiter(chosen.values(), dtype=np.int64, count=len(chosen))
    noisy = (cls < 0) | (rng.random(len(cls)) > 0.85)
    labels = np.where(noisy, rng.integers(0, K_CLASSES, len(cls)), cls)
    order = np.argsort(idx)
    return idx[order], labels[order]


def generator_entropy_bits(n: int, groups: int, keep: float, k: int = K_CLASSES) -> float:
    """Entropy of ``clustered``'s output: which groups are home to which class, then per item (independently,
    which overstates the fixed-size draws by a few dozen bits) whether it is kept and, if so, its label."""

    def h(p: float) -> float:
        return 0.0 if p <= 0 or p >= 1 else -(p * log2(p) + (1 - p) * log2(1 - p))

    def label_entropy(p_top: float) -> float:  # one class with p_top, the others uniform
        q = (1 - p_top) / (k - 1)
        return -(p_top * log2(p_top) + (k - 1) * q * log2(q))

    K = round(keep * n)
    size = n // groups
    home = 3 * k * size
    n_home = min(round(0.8 * K), home)
    a = n_home / home  # a home-group item is drawn as a home item
    b = (K - n_home) / (n - n_home)  # any other item is drawn as a scattered one
    kept = a + (1 - a) * b
    p_class = (a / kept) * (0.85 + 0.15 / k) + (1 - a / kept) / k
    homes = sum(log2(groups - i) for i in range(3 * k)) - k * log2(6)
    return homes + home * (h(kept) + kept * label_entropy(p_class)) + (n - home) * (h(b) + b * log2(k))


def table(title: str, rows: list[dict[str, str]]) -> None:
    print(f"\n### {title}\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(r[c] for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows_a, rows_b = [], []
    for n, groups in POOLS.items():
        for keep in KEEPS:
            K = round(keep * n)
            idx = np.sort(rng.choice(n, size=K, replace=False))
            lab = rng.integers(0, K_CLASSES, K)
            p = payload(idx, lab, n, K_CLASSES)
            b = bound_bytes(n, lab, K_CLASSES)
            pb, pt, pd = timed(p, "paper-v1")
            eb, et, _ = timed(p, "entropy-v2")
            rows_a.append(
                {
                    "pool": f"{n:,}",
                    "keep": f"{100 * keep:g} %",
                    "K": f"{K:,}",
                    "bound B": f"{b:,.0f}",
                    "paper B": f"{pb:,}",
                    "paper/bound": f"{pb / b:.3f}",
                    "entropy-v2 B": f"{eb:,}",
                    "v2/bound": f"{eb / b:.3f}",
                    "v2/paper": f"{eb / pb:.3f}",
                    "enc+dec s (paper / v2)": f"{pt:.2f} / {et:.2f}",
                }
            )
            idx, lab = clustered(n, groups, keep, rng)
            p = payload(idx, lab, n, K_CLASSES)
            pb, _, pd = timed(p, "paper-v1")
            ent = generator_entropy_bits(n, groups, keep) / 8
            bounds = np.linspace(0, n, groups + 1).astype(np.int64)
            gl = PoolLayout.from_groups(np.repeat(np.arange(groups), np.diff(bounds)))
            v1b = min(timed(p, "entropy-v1", gl)[0], timed(p, "entropy-v1")[0])
            eb, _, _ = timed(p, "entropy-v2")
            gb, gt, gd = timed(p, "entropy-v2", gl)
            rows_b.append(
                {
                    "pool": f"{n:,}",
                    "groups": f"{groups:,}",
                    "keep": f"{100 * keep:g} %",
                    "K": f"{K:,}",
                    "paper B": f"{pb:,} ({pd})",
                    "generator entropy B": f"{ent:,.0f}",
                    "entropy/paper (floor)": f"{ent / pb:.3f}",
                    "v1/paper": f"{v1b / pb:.3f}",
                    "v2 B, pool order": f"{eb:,}",
                    "v2/paper": f"{eb / pb:.3f}",
                    "v2 B, manifest groups": f"{gb:,}",
                    "**v2 groups/paper**": f"**{gb / pb:.3f}**",
                    "v2/entropy": f"{gb / ent:.3f}",
                    "v2 choice": gd,
                    "enc+dec s": f"{gt:.2f}",
                }
            )
    table("(a) uniform random selections, k = 100", rows_a)
    table("(b) clustered selections (generator in the docstring), k = 100", rows_b)
    rows_c = []
    for path in sorted((HERE / "data").glob("mini-*.plada")):
        p = decode_payload(path.read_bytes())
        pb, _, pd = timed(p, "paper-v1")
        eb, _, _ = timed(p, "entropy-v2")
        row = {
            "payload": path.name,
            "K": f"{len(p):,}",
            "paper B": f"{pb:,} ({pd})",
            "order-free bound B": f"{bound_bytes(p.n_pool, p.labels, len(p.classes)):,.0f}",
            "v2 B": f"{eb:,}",
            "v2/paper": f"{eb / pb:.3f}",
        }
        pool = _mini_pool(p.n_pool)
        if pool is not None and pool.layout is not None:
            for name, layout in (("manifest groups", pool.layout), ("pixel-cluster order", _cluster_layout(pool))):
                v1b, _, _ = timed(p, "entropy-v1", layout)
                gb, _, gd = timed(p, "entropy-v2", layout)
                row |= {
                    f"v2 B, {name}": f"{gb:,} ({gd})",
                    f"v2/paper, {name}": f"{gb / pb:.3f}",
                    f"v1/paper, {name}": f"{v1b / pb:.3f}",
                }
        rows_c.append(row)
    if rows_c:
        table("(c) real mini-world selections (demo: energy + Safety-Net, keep 5 %)", rows_c)


_CLUSTERS: dict[str, PoolLayout] = {}


def _cluster_layout(pool: Pool, k: int = 64) -> PoolLayout:
    """An order by embedding cluster, computed once per pool: PCA(32) of the pixels + k-means (k = 64).

    A stand-in for clustering backbone features (what a production pool without folders would use)."""
    if pool.pool_id not in _CLUSTERS:
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.decomposition import PCA

        x = pool.batch(np.arange(len(pool))).reshape(len(pool), -1).astype(np.float32) / 255.0
        z = PCA(32, random_state=0).fit_transform(x)
        km = MiniBatchKMeans(k, random_state=0, n_init=3, batch_size=4096).fit(z)
        _CLUSTERS[pool.pool_id] = PoolLayout.from_groups(km.labels_.astype(np.int64))
    return _CLUSTERS[pool.pool_id]


def _mini_pool(n_pool: int) -> Pool | None:
    """The locally built mini-v1 pool (its manifest groups give the coding layout), if present."""
    try:
        from plada.shared.datasets.mini import default_world_dir
        from plada.shared.pool import open_pool

        pool = open_pool(default_world_dir() / "pools" / "mini-v1")
    except Exception:
        return None
    return pool if len(pool) == n_pool else None


if __name__ == "__main__":
    main()
