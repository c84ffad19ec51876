"""Throughput of the ImageNet-scale path beside the ceilings measured on an H100, from a synthetic JPEG pool.

    python bench/gpu_check.py                # CUDA when present: 20,000 JPEGs, 224 px
    python bench/gpu_check.py --items 256    # the CPU run: smaller, reported per core too

Rows (each with its ceiling and the ratio; target ≥ 0.8):
- JPEG decode through ``pool_batches`` (DataLoader workers, PIL)          ceiling: PIL, 16 processes, 3,264 img/s
- pool indexing = decode + resnet50 forward (bf16, channels_last on CUDA) ceiling: decode-bound, 3,264 img/s
- resnet50 / convnext_tiny inference alone on decoded batches             ceilings: 13,138 / 7,851 img/s
- student training, resnet18 at 224 px on decoded batches                  ceiling: 11,860 img/s
- scoring 1.28M cached features (probe head + energy + top-k)              no ceiling given: seconds
- CUDA bf16 vs CPU fp32 labels on the same images                          agreement %
Models are timm architectures with random weights: throughput does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.executor import predict_pool
from plada.server.pipeline.teacher import ProbeHead
from plada.shared import nn as pnn
from plada.shared.pool import index_image_folder

CEILING = {"decode": 3264.0, "resnet50": 13138.0, "convnext_tiny": 7851.0, "train_resnet18": 11860.0}


def _write_jpegs(args: tuple[Path, int, int]) -> None:
    """ImageNet-like files: 400×300, smooth content plus texture, quality 90 (~40-60 KB each)."""
    from PIL import Image

    folder, start, count = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:300, 0:400]
    for i in range(start, start + count):
        a, b, c = rng.uniform(0.01, 0.05, 3)
        base = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], -1) * 90 + 128
        img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"n{i % 100:08d}" / f"{i}.JPEG", quality=90)


def make_pool(root: Path, n: int, procs: int) -> Path:
    src = root / "train"
    for g in range(100):
        (src / f"n{g:08d}").mkdir(parents=True, exist_ok=True)
    step = max(1, n // (procs * 4))
    with ProcessPoolExecutor(procs) as ex:
        list(ex.map(_write_jpegs, [(src, s, min(step, n - s)) for s in range(0, n, step)]))
    return src


def timed(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def infer_rate(arch: str, x: np.ndarray, device: torch.device, reps: int) -> float:
    model = pnn.create_model(arch, in_chans=3, num_classes=1000, seed=0).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    batches = [x] * reps
    pnn.predict(model, [x[:32]], size=(224, 224), channels=3, device=device)  # warm-up (cudnn autotune)
    return timed(lambda: pnn.predict(model, batches, size=(224, 224), channels=3, device=device), len(x) * reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=None, help="JPEGs in the synthetic pool (CUDA 20,000; CPU 256)")
    ap.add_argument("--features", type=int, default=1_281_167, help="cached features to score")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pnn.pick_device(args.device)
    cuda = device.type == "cuda"
    run = RunConfig(device=device)
    cores = os.cpu_count() or 1
    n = args.items or (20_000 if cuda else 256)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({cores} cores)"
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        src = make_pool(Path(tmp), n, cores)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        pool = index_image_folder(src, Path(tmp) / "pool", "synthetic-jpeg", image_size=224)
        hash_rate = n / (time.perf_counter() - t)
        chunk = 256 if cuda else 64
        rows.append(("manifest: list + hash", hash_rate, None))

        def decode() -> None:
            for _ in pnn.pool_batches(pool, device=device, chunk=chunk):
                pass

        rows.append(("JPEG decode (pool_batches, PIL workers)", timed(decode, n), CEILING["decode"]))
        r50 = pnn.create_model("resnet50", in_chans=3, num_classes=1000, seed=0)
        predict_pool(
            r50, pool, size=(224, 224), channels=3, config=run, want_features=False, n=min(n, chunk), chunk=chunk
        )
        rows.append(
            (
                "pool indexing: decode + resnet50",
                timed(
                    lambda: predict_pool(
                        r50, pool, size=(224, 224), channels=3, config=run, want_features=False, chunk=chunk
                    ),
                    n,
                ),
                CEILING["decode"],
            )
        )
        x = pool.batch(np.arange(min(n, 256 if cuda else 32)))
    reps = 20 if cuda else 1
    rows.append(("resnet50 inference (decoded)", infer_rate("resnet50", x, device, reps), CEILING["resnet50"]))
    rows.append(
        ("convnext_tiny inference (decoded)", infer_rate("convnext_tiny", x, device, reps), CEILING["convnext_tiny"])
    )
    r18 = pnn.create_model("resnet18", in_chans=3, num_classes=1000, seed=0)
    y = np.arange(len(x)) % 1000
    cfg = pnn.FitConfig(epochs=1, batch_size=len(x), augment=False)
    pnn.fit(r18, x, y, cfg, size=(224, 224), channels=3, device=device)  # warm-up
    cfg = pnn.FitConfig(epochs=reps * 2, batch_size=len(x), augment=False)
    rows.append(
        (
            "student training: resnet18 224 px",
            timed(lambda: pnn.fit(r18, x, y, cfg, size=(224, 224), channels=3, device=device), len(x) * reps * 2),
            CEILING["train_resnet18"],
        )
    )
    feats = np.random.default_rng(0).standard_normal((args.features, 128)).astype(np.float16)
    head = ProbeHead(feats[:4096].astype(np.float32).mean(0), feats[:4096].astype(np.float32).std(0) + 1e-6, 1000)
    t = time.perf_counter()
    z = head.logits(feats, device=device)
    energy = -torch.logsumexp(torch.from_numpy(z), 1).numpy()
    np.argpartition(energy, len(energy) // 100)[: len(energy) // 100]
    score_s = time.perf_counter() - t
    agree = None
    if cuda:
        m = pnn.create_model("resnet18", in_chans=3, num_classes=1000, seed=1)
        z_cuda, _ = pnn.predict(m, [x], size=(224, 224), channels=3, device=device)
        z_cpu, _ = pnn.predict(m, [x], size=(224, 224), channels=3, device=torch.device("cpu"))
        agree = float((z_cuda.argmax(1) == z_cpu.argmax(1)).mean())

    print(
        f"\nplada GPU check on {name}, torch {torch.__version__}; "
        f"{n:,} synthetic JPEGs (400x300, made in {gen_s:.0f} s)"
    )
    print("\n| stage | img/s | per core | ceiling (H100) | ratio |")
    print("|---|---|---|---|---|")
    for stage, rate, ceiling in rows:
        ratio = f"{rate / ceiling:.2f}" if ceiling else "-"
        print(f"| {stage} | {rate:,.0f} | {rate / cores:,.1f} | {f'{ceiling:,.0f}' if ceiling else '-'} | {ratio} |")
    print(
        f"| scoring {args.features:,} cached features (probe + energy + top 1 %) | "
        f"{args.features / score_s:,.0f} | - | - | {score_s:.2f} s |"
    )
    if agree is not None:
        print(f"\nCUDA bf16 vs CPU fp32 resnet18 labels on {len(x)} images: {100 * agree:.1f} % agree")


if __name__ == "__main__":
    main()
