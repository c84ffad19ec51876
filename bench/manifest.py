"""How fast an ImageNet-sized folder pool is indexed and opened: a synthetic tree of small files, one table.

    python bench/manifest.py [--items 1281167] [--groups 1000] [--dir /tmp/plada-tree] [--keep]

The tree mimics ImageNet-1K's layout (``nXXXXXXXX/nXXXXXXXX_<i>.JPEG``, 1,000 folders) with tiny files
(~100 bytes), so the figures are for listing, opening and hashing, not for reading 140 GB of JPEGs: with real
images the hash pass is disk-bound (BLAKE2b runs at ~1 GB/s a core). Rows: tree generation (not plada), the
index build (list + sort + parallel hash + write), an interrupted build resumed from its checkpoint, and
``open_pool`` (load + pool_id check), with the manifest's bytes on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from pathlib import Path

from plada.shared.pool import index_image_folder, open_pool


def make_tree(root: Path, items: int, groups: int) -> None:
    per, extra = divmod(items, groups)
    for g in range(groups):
        wnid = f"n{g:08d}"
        d = root / wnid
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per + (g < extra)):
            fd = os.open(d / f"{wnid}_{i}.JPEG", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, f"\xff\xd8 synthetic {wnid} {i} ".encode() * 4)
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_281_167)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/plada-tree"))
    ap.add_argument("--keep", action="store_true", help="keep the tree for another run")
    args = ap.parse_args()
    src, out = args.dir / "train", args.dir / "pool"
    rows: list[tuple[str, float, str]] = []
    if not (src.is_dir() and sum(1 for _ in src.iterdir()) == args.groups):
        shutil.rmtree(args.dir, ignore_errors=True)
        t = time.perf_counter()
        make_tree(src, args.items, args.groups)
        rows.append(("generate synthetic tree (not plada)", time.perf_counter() - t, ""))
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    pool = index_image_folder(src, out, "bench")
    dt = time.perf_counter() - t
    rows.append(("index build: list, sort, hash, write", dt, f"{len(pool) / dt:,.0f} items/s"))

    shutil.rmtree(out, ignore_errors=True)

    def stop_half_way(done: int, n: int) -> None:
        if done >= n // 2:
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        index_image_folder(src, out, "bench", progress=stop_half_way)
    t = time.perf_counter()
    resumed = index_image_folder(src, out, "bench")
    rows.append(
        (
            "resume after an interruption at 50 %",
            time.perf_counter() - t,
            "same pool_id: " + str(resumed.pool_id == pool.pool_id),
        )
    )

    t = time.perf_counter()
    opened = open_pool(out)
    rows.append(("open_pool (load manifest, check pool_id)", time.perf_counter() - t, f"{len(opened):,} items"))
    size = (out / "manifest.npz").stat().st_size
    print(
        f"\n{len(pool):,} items in {args.groups:,} folders, {os.cpu_count()} CPU cores; "
        f"manifest.npz {size / 1e6:.1f} MB ({size / len(pool):.1f} B/item)\n"
    )
    print("| step | seconds | note |")
    print("|---|---|---|")
    for name, sec, note in rows:
        print(f"| {name} | {sec:.1f} | {note} |")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
