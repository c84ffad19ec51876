"""Teacher: split the publisher's data (server-side validation), train, then label + score the pool in chunks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plada.server.pipeline import blocks
from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.features import FeatureIndex
from plada.server.pipeline.progress import SCORE, TEACHER, StageProgress
from plada.shared import nn as pnn
from plada.shared.errors import InvalidSpecError
from plada.shared.pool import Pool
from plada.shared.probe import LinearProbe, fit_linear_probe
from plada.shared.schemas import TaskSpec, TeacherOptions


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class holdout, at least one validation and one training item for every class with ≥ 2 items."""
    rng = np.random.default_rng(seed)
    tr: list[np.ndarray] = []
    va: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(len(idx) * val_fraction)
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


@dataclass
class Teacher:
    model: nn.Module
    size: tuple[int, int]
    channels: int
    device: torch.device
    val_accuracy: float
    train_accuracy: float
    n_train: int
    n_val: int


def train_teacher(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    opts: TeacherOptions,
    *,
    image_shape: tuple[int, int, int],
    device: torch.device,
    weights_dir: Path | None = None,
    progress: pnn.Progress | None = None,
) -> Teacher:
    """Train on the training part; accuracy on the held-out part is what the server reports as teacher acc."""
    h, w, c = image_shape
    if opts.image_size is not None:
        h = w = opts.image_size
    elif opts.pretrained:  # ImageNet features are weak on 28-64 px inputs and costly past 224
        h = w = int(min(224, max(128, min(h, w))))
    if opts.pretrained:
        c = 3  # ImageNet weights see RGB; grey pools are repeated over the channels
    tr, va = stratified_split(y, opts.val_fraction, opts.seed)
    arch = "smallcnn" if opts.arch == "auto" else opts.arch  # (auto's probe needs a feature index: run_teacher)
    model = pnn.create_model(
        arch, in_chans=c, num_classes=n_classes, seed=opts.seed, pretrained=opts.pretrained, weights_dir=weights_dir
    )
    if opts.pretrained and opts.finetune == "head":
        pnn.freeze_body(model)
    cfg = pnn.FitConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed)
    pnn.fit(model, x[tr], y[tr], cfg, size=(h, w), channels=c, device=device, progress=progress)
    val_acc = pnn.accuracy(model, x[va], y[va], size=(h, w), channels=c, device=device)
    train_acc = pnn.accuracy(model, x[tr], y[tr], size=(h, w), channels=c, device=device)
    return Teacher(
        model=model,
        size=(h, w),
        channels=c,
        device=device,
        val_accuracy=val_acc,
        train_accuracy=train_acc,
        n_train=len(tr),
        n_val=len(va),
    )


def score_pool(
    teacher: Teacher,
    pool: Pool,
    *,
    config: RunConfig | None = None,
    n: int | None = None,
    chunk: int = 2048,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits (N, k) and features over the first ``n`` pool items (default all), streamed in chunks
    that DataLoader workers decode while the model runs, or on Ray (``config.executor``). The teacher's own
    device wins over ``config.device``: the model already lives there."""
    n_pool = len(pool) if n is None else n
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, n_pool)

    from plada.server.pipeline.executor import predict_pool

    return predict_pool(
        teacher.model,
        pool,
        n=n_pool,
        chunk=chunk,
        workers=workers,
        config=dataclasses.replace(config or RunConfig(), device=teacher.device),
        size=teacher.size,
        channels=teacher.channels,
        want_features=True,
        progress=tick,
    )


class ProbeHead(nn.Module):
    """A teacher that is a head on cached backbone features: standardise, then one hidden layer."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray, n_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float32))
        d, self.n_classes = len(mu), n_classes
        self.net = nn.Sequential(nn.Dropout(0.1), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    mu: torch.Tensor  # buffers (registered above): typed for the checker
    sd: torch.Tensor

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((f - self.mu) / self.sd)
        return out

    @torch.no_grad()
    def logits(self, feats: np.ndarray, chunk: int = 65_536, device: torch.device | None = None) -> np.ndarray:
        """Logits for (memory-mapped) features, chunk by chunk; on ``device`` when given (a GPU scores
        ImageNet-21K's 14.2M cached features in seconds)."""
        self.eval()
        if device is not None:
            self.to(device)
        dev = self.mu.device
        out = [
            self(torch.from_numpy(np.asarray(feats[s : s + chunk], dtype=np.float32)).to(dev)).float().cpu().numpy()
            for s in range(0, len(feats), chunk)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), np.float32)


def train_probe(
    f_train: np.ndarray, y_train: np.ndarray, n_classes: int, *, epochs: int = 60, seed: int = 0
) -> ProbeHead:
    """Fit the head with AdamW on minibatches; seconds on a CPU because there is no backbone forward pass."""
    torch.manual_seed(seed)
    f = np.asarray(f_train, dtype=np.float32)
    head = ProbeHead(f.mean(0), f.std(0) + 1e-6, n_classes)
    x = torch.from_numpy(f)
    y = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    bs = 256
    steps = epochs * max(1, -(-len(x) // bs))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), bs):
            idx = perm[s : s + bs]
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@dataclass
class TeacherOutput:
    """What the rest of the pipeline needs from a teacher, whichever kind it was."""

    arch: str
    logits: np.ndarray  # (N, k) over the pool
    pool_features: np.ndarray | None
    target_features: np.ndarray | None  # every upload image, embedded like the pool
    feature_source: str
    val_accuracy: float
    train_accuracy: float
    n_train: int
    n_val: int
    classify: Callable[[np.ndarray], np.ndarray] | None = None  # images → logits (benchmarks measure the teacher)
    details: dict[str, Any] = field(default_factory=dict)
    pretrained_features: bool = False  # pool/target features come from an ImageNet-pretrained backbone
    # a compressed index's full-width rows and the upload's full features, for the linear passes (domain
    # classifier, probe proxies); None: those read pool_features / target_features too
    fit_features: np.ndarray | None = None
    fit_targets: np.ndarray | None = None

    @property
    def linear_pool(self) -> np.ndarray | None:
        return self.fit_features if self.fit_features is not None else self.pool_features

    @property
    def linear_targets(self) -> np.ndarray | None:
        return self.fit_targets if self.fit_features is not None else self.target_features


def pool_logits(probe: LinearProbe, feats: np.ndarray, config: RunConfig) -> np.ndarray:
    """The probe's logits over every pool row, a block at a time: in RAM (float32) up to
    ``config.logits_ram_bytes``, beyond it in a float16 spill file (ImageNet-21K × 100 classes: 5.7 GB as
    float32), its pages handed back as each block is written."""
    out = blocks.logits_array(len(feats), probe.n_classes, config.logits_ram_bytes, config.scratch_dir)
    for s, z in config.streaming().map(feats, blocks.block_fn(probe.logits)):
        out[s : s + len(z)] = z
        blocks.release(out[s : s + len(z)])
    return out


def resolve_teacher_arch(arch: str, index: FeatureIndex | None) -> str:
    """``auto``: a probe on the pool's features when they come from a pretrained backbone (seconds, and as good
    as fine-tuning on small tasks), else the small CNN trained on pixels."""
    if arch != "auto":
        return arch
    return "probe" if index is not None and index.pretrained else "smallcnn"


def _features_source(index: FeatureIndex) -> str:
    src = f"index {index.name} ({index.info['arch']}, model {index.model_id[:12]})"
    if index.compressed:
        tier = f"; linear passes on {index.full.name!r}, full width" if index.full is not None else ""
        src += f", compressed to {index.dim} columns{tier}"
    return src


def run_teacher(
    pool: Pool,
    x: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
    spec: TaskSpec,
    index: FeatureIndex | None,
    *,
    config: RunConfig,
    report: StageProgress,
) -> TeacherOutput:
    """A probe head on the pool's cached features (no pool forward pass), or a CNN/timm model trained on
    pixels that then labels the pool in chunks. Either way the held-out part is only used to measure."""
    k = len(spec.classes)
    device = config.device

    def embed(imgs: np.ndarray) -> np.ndarray:
        assert index is not None
        return index.embed(imgs, device=device, onnx=config.onnx)

    arch = resolve_teacher_arch(spec.teacher.arch, index)
    if arch == "probe":
        if index is None:
            raise InvalidSpecError(
                f"teacher 'probe' needs cached features for pool {pool.name}: run 'plada-server pool embed {pool.name}'"
            )
        report(0.0, "teacher: embedding the upload with the pool's backbone")
        full = index.embed_full(x, device=device, onnx=config.onnx)  # every dimension, even when compressed
        probe = fit_linear_probe(full[tr], y[tr], k, seed=spec.teacher.seed)
        report(TEACHER, f"teacher: probe trained (L2 {probe.l2:g}, temperature {probe.temperature:.2f})")
        # on the full-width rows when the compressed index's source is kept, else lifted onto the stored rows
        logits = pool_logits(probe if index.full is not None else index.lift(probe), index.linear, config)
        report(TEACHER + SCORE, "pool scored from cached features")
        tf = index.project(full)
        return TeacherOutput(
            "probe",
            logits,
            index.features,
            tf,
            _features_source(index),
            probe.accuracy(full[va], y[va]),
            probe.accuracy(full[tr], y[tr]),
            len(tr),
            len(va),
            classify=lambda imgs: probe.logits(index.embed_full(imgs, device=device, onnx=config.onnx)),
            details={"l2": probe.l2, "temperature": round(probe.temperature, 4), **probe.info},
            pretrained_features=index.pretrained,
            fit_features=index.full.features if index.full is not None else None,
            fit_targets=full if index.full is not None else None,
        )
    if spec.teacher.pretrained:
        try:  # a missing weights file is the publisher's (or operator's) to fix: no retries
            pnn.find_weights(arch, config.weights_dir)
        except ValueError as exc:
            raise InvalidSpecError(f"teacher.pretrained: {exc}") from exc
    teacher = train_teacher(
        x,
        y,
        k,
        spec.teacher.model_copy(update={"arch": arch}),
        image_shape=pool.image_shape,
        device=device,
        weights_dir=config.weights_dir,
        progress=lambda f, m: report(TEACHER * f, f"teacher: {m}"),
    )
    logits, feats = score_pool(
        teacher,
        pool,
        config=config,
        progress=lambda d, n: report(TEACHER + SCORE * d / n, f"scoring pool: {d:,}/{n:,}"),
    )

    def run(imgs: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The trained teacher on images outside the pool (the upload, a test split), in chunks."""
        chunks = (imgs[i : i + 1024] for i in range(0, len(imgs), 1024))
        return pnn.predict(
            teacher.model, chunks, size=teacher.size, channels=teacher.channels, device=device, want_features=features
        )

    pool_f: np.ndarray | None
    target_f: np.ndarray | None
    if index is not None:
        pool_f, target_f, source = index.features, embed(x), _features_source(index)
    elif feats is not None:
        pool_f, target_f, source = feats, run(x, True)[1], "teacher penultimate layer"
    else:
        pool_f = target_f = None
        source = "none"

    return TeacherOutput(
        arch,
        logits,
        pool_f,
        target_f,
        source,
        teacher.val_accuracy,
        teacher.train_accuracy,
        teacher.n_train,
        teacher.n_val,
        classify=lambda imgs: run(imgs, False)[0],
        pretrained_features=index is not None and index.pretrained,
    )


def to_cache(out: TeacherOutput, index: FeatureIndex | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from_index = index is not None and out.pool_features is index.features
    meta = {
        "arch": out.arch,
        "feature_source": out.feature_source,
        "val_accuracy": out.val_accuracy,
        "train_accuracy": out.train_accuracy,
        "n_train": out.n_train,
        "n_val": out.n_val,
        "details": out.details,
        "pretrained_features": out.pretrained_features,
        "pool_features": "index" if from_index else ("teacher" if out.pool_features is not None else "none"),
        "fit_features": "index-full" if out.fit_features is not None else "none",
    }
    arrays = {"logits": np.asarray(out.logits)}
    if out.target_features is not None:
        arrays["target_features"] = out.target_features
    if out.fit_targets is not None:
        arrays["fit_targets"] = out.fit_targets
    if out.pool_features is not None and not from_index:
        arrays["pool_features"] = np.asarray(out.pool_features)
    return meta, arrays


def from_cache(meta: dict[str, Any], arrays: dict[str, np.ndarray], index: FeatureIndex | None) -> TeacherOutput:
    pool_f = index.features if meta["pool_features"] == "index" and index is not None else arrays.get("pool_features")
    full = index.full if index is not None and meta.get("fit_features") == "index-full" else None
    return TeacherOutput(
        meta["arch"],
        arrays["logits"],
        pool_f,
        arrays.get("target_features"),
        meta["feature_source"],
        meta["val_accuracy"],
        meta["train_accuracy"],
        meta["n_train"],
        meta["n_val"],
        details=meta["details"] | {"cached": True},
        pretrained_features=meta["pretrained_features"],
        fit_features=full.features if full is not None else None,
        fit_targets=arrays.get("fit_targets") if full is not None else None,
    )
