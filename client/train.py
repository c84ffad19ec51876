"""Student training on the client: the payload's pool items with their pseudo-labels, then evaluation.

Checkpoints after every epoch (atomic), resumes from the last one, writes ``metrics.json`` at the end.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plada.client.coverage import DEFAULT_MIN_COVERAGE, Coverage, usable_items
from plada.client.dataset import PayloadDataset
from plada.shared import nn as pnn
from plada.shared.errors import InvalidDataError
from plada.shared.files import atomic_write, atomic_write_bytes
from plada.shared.payload import Payload, payload_sha256
from plada.shared.pool import Pool

log = logging.getLogger("plada.client")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


@dataclass
class TrainConfig:
    """``pretrained``: start a timm ``arch`` from local ImageNet weights and fine-tune every layer (the paper's
    recipe: AdamW 1e-3, cosine; ``head_init="probe"`` starts the classifier from the head-only probe, LP-FT).
    ``head_only``: freeze a pretrained backbone (``arch``; smallcnn means the default, EfficientNet-Lite0), embed
    the payload's items once (cached by item hash) and fit a linear probe — seconds on a laptop CPU, and the
    same probe the server's proxy students fit; None decides by the pool (``resolve_head_only``)."""

    arch: str = "smallcnn"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    max_tier: int | None = None  # train on priority tiers 0..max_tier only (less compute), None = all
    pretrained: bool = False
    head_only: bool | None = None  # None: head-only on RGB pools when pretrained weights are installed
    image_size: int | None = None  # model input side; default: the pool's (pretrained: that side in 128-224)
    feature_cache: str | None = None  # head_only: folder of cached item features (default: <cache>/features)
    head_init: str = "zero"  # pretrained: start the classifier at zero (the paper's recipe) or from the head-only probe
    weights_dir: str | None = None  # local pretrained weights (then weights packages); never downloaded
    onnx: bool = True  # frozen backbones through ONNX Runtime on the CPU when it is installed
    min_coverage: float = DEFAULT_MIN_COVERAGE  # attached copies: refuse below this share of usable items


def load_eval_split(
    path: Path, classes: list[str], image_shape: tuple[int, int, int] = (224, 224, 3)
) -> tuple[np.ndarray, np.ndarray]:
    """An ``.npz`` with ``x``, ``y`` and optionally ``classes``, or a ``.zip`` of ``<class>/<image>`` folders
    read by the loader publishing uses (``plada.shared.targetdata``: the same checks, photos of any size
    resized to ``image_shape``, the pool's working shape); labels are mapped to the payload's classes by name."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InvalidDataError(f"cannot read evaluation split {path}: {exc}") from exc
    is_npz = False
    if head[:2] == b"PK":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                is_npz = all(n.endswith(".npy") for n in zf.namelist())
        except zipfile.BadZipFile as exc:
            raise InvalidDataError(f"cannot read evaluation split {path}: {exc}") from exc
    names: list[str] | None = None
    if head[:2] == b"PK" and not is_npz:
        from plada.shared.targetdata import read_target_data

        x, y = read_target_data(path.read_bytes(), path.name, classes, image_shape)
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                x, y = z["x"], z["y"].astype(np.int64)
                names = [str(c) for c in z["classes"]] if "classes" in z.files else None
        except (OSError, KeyError, ValueError) as exc:
            raise InvalidDataError(f"cannot read evaluation split {path}: {exc}") from exc
    if names is not None and names != classes:
        index = {c: i for i, c in enumerate(classes)}
        missing = sorted(set(names) - set(index))
        if missing:
            raise InvalidDataError(f"evaluation classes {missing[:5]} are not in the payload's classes")
        y = np.asarray([index[names[v]] for v in y], dtype=np.int64)
    return x, y


def train_student(
    payload: Payload,
    pool: Pool,
    out_dir: Path | str,
    cfg: TrainConfig | None = None,
    *,
    eval_split: tuple[np.ndarray, np.ndarray] | None = None,
    payload_bytes: bytes | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Train a student on ``payload`` over ``pool``; returns (and writes) the metrics."""
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir).expanduser()
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pnn.pick_device(cfg.device)
    h, w, c = pool.image_shape
    if cfg.max_tier is not None:
        payload = payload.prefix(cfg.max_tier)
    sha = payload_sha256(payload_bytes) if payload_bytes is not None else payload.sha256
    payload, coverage = usable_items(payload, pool, cfg.min_coverage)  # an attached copy: what it really holds
    if resolve_head_only(cfg, pool):
        return _train_head_only(payload, pool, out_dir, cfg, eval_split, sha, coverage, device, t0, progress)
    if cfg.pretrained:
        h = w = cfg.image_size or pretrained_input_side(pool)
        c = 3
    elif cfg.image_size:
        h = w = cfg.image_size
    x: np.ndarray | pnn.PoolItems
    if getattr(pool, "decode_bound", False):  # JPEG folders, tar shards: decode while training, in workers
        x, y = pnn.PoolItems(pool, np.asarray(payload.indices)), np.asarray(payload.labels, dtype=np.int64)
    else:
        x, y = PayloadDataset(payload, pool).arrays()
    try:
        model = pnn.create_model(
            cfg.arch,
            in_chans=c,
            num_classes=len(payload.classes),
            seed=cfg.seed,
            pretrained=cfg.pretrained,
            weights_dir=_weights_dir(cfg),
        )
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from exc
    if cfg.pretrained and cfg.head_init == "probe":
        report = progress or (lambda _f, _m: None)
        init_classifier_from_probe(model, _fit_head(payload, pool, cfg, cfg.arch, h, device, report).probe)
    ckpt_path = out_dir / CHECKPOINT
    start_epoch, opt_state = 0, None
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("payload_sha256") == sha and ckpt.get("config") == asdict(cfg):
            model.load_state_dict(ckpt["model"])
            start_epoch, opt_state = int(ckpt["epoch"]) + 1, ckpt["optimizer"]
            # said out loud (the CLI's log and any Python caller's stderr): a rerun into the same folder resumes
            log.warning(
                "%s: resuming from its checkpoint (epoch %d of %d already trained on this payload and config)%s; "
                "use another out folder to train from scratch",
                out_dir,
                start_epoch,
                cfg.epochs,
                ": nothing left to train" if start_epoch >= cfg.epochs else "",
            )

    def on_epoch_end(epoch: int, loss: float, opt: torch.optim.Optimizer) -> None:
        pnn.save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "loss": loss,
                "payload_sha256": sha,
                "config": asdict(cfg),
            },
        )

    fit_cfg = pnn.FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    if start_epoch < cfg.epochs:
        pnn.fit(
            model,
            x,
            y,
            fit_cfg,
            size=(h, w),
            channels=c,
            device=device,
            progress=progress,
            start_epoch=start_epoch,
            optimizer_state=opt_state,
            on_epoch_end=on_epoch_end,
        )
    train_acc = pnn.accuracy(model, x, y, size=(h, w), channels=c, device=device)
    metrics: dict[str, Any] = _run_metrics(payload, sha, asdict(cfg), coverage) | {
        "resumed_from_epoch": start_epoch,
        "train_accuracy_on_pseudo_labels": train_acc,
        "device": str(device),
    }
    if eval_split is not None:
        ex, ey = eval_split
        metrics["test_accuracy"] = pnn.accuracy(model, ex, ey, size=(h, w), channels=c, device=device)
        metrics["n_test"] = len(ey)
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    pnn.save_checkpoint(
        out_dir / "model.pt",
        {"model": model.state_dict(), "arch": cfg.arch, "classes": list(payload.classes), "image_shape": [h, w, c]},
    )
    atomic_write_bytes(out_dir / METRICS, json.dumps(metrics, indent=2).encode())
    return metrics


def _run_metrics(
    payload: Payload, sha: str | None, config: dict[str, Any], coverage: Coverage | None
) -> dict[str, Any]:
    """What every run's metrics.json starts with: which payload, which pool, which configuration, and (on an
    attached copy) how much of the payload the copy held."""
    out = {
        "task": payload.task,
        "version": payload.version,
        "payload_sha256": sha,
        "pool_id": payload.pool_id,
        "n_items": len(payload),
        "config": config,
    }
    if coverage is not None:
        out["coverage"] = coverage.as_dict()
    return out


def resolve_head_only(cfg: TrainConfig, pool: Pool) -> bool:
    """``head_only`` None (the default) means: on an RGB pool, with local weights for the default backbone, a
    plain config (smallcnn, not ``pretrained``) trains head-only. That is the client the server's probe proxies
    predict, and a small CNN from scratch on a few thousand photos learns little. Grey pools (the mini world)
    keep the small CNN."""
    if cfg.head_only is not None:
        return cfg.head_only
    return (
        not cfg.pretrained
        and cfg.arch == "smallcnn"
        and pool.image_shape[2] == 3
        and pnn.backbone_available(pnn.DEFAULT_BACKBONE, _weights_dir(cfg))
    )


def _weights_dir(cfg: TrainConfig) -> Path | None:
    return Path(cfg.weights_dir).expanduser() if cfg.weights_dir else None


def pretrained_input_side(pool: Pool) -> int:
    """Input side for pretrained networks: the pool's side, but at least 128 px and at most 224 px."""
    return int(min(224, max(128, min(pool.image_shape[:2]))))


class FeatureStore:
    """Frozen-backbone features of pool items, keyed by the item's manifest hash (so a changed item never
    reuses a stale row) under ``<root>/<arch>-<side>px/``: one ``.npz`` per batch of new items."""

    def __init__(self, root: Path, arch: str, side: int) -> None:
        self.dir = Path(root).expanduser() / f"{arch}-{side}px"
        self._rows: dict[bytes, np.ndarray] = {}
        if self.dir.is_dir():
            for f in sorted(self.dir.glob("*.npz")):
                try:
                    with np.load(io.BytesIO(f.read_bytes()), allow_pickle=False) as z:
                        for h, row in zip(z["hashes"], z["features"], strict=True):
                            self._rows[h.tobytes()] = row
                except (OSError, KeyError, ValueError):
                    f.unlink(missing_ok=True)  # a damaged file only costs its recomputation

    def get_many(self, hashes: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
        """Features for each hash row, computing the missing ones with ``compute(positions)``; returns
        (features, how many were computed)."""
        keys = [h.tobytes() for h in hashes]
        missing = np.asarray([i for i, k in enumerate(keys) if k not in self._rows], dtype=np.int64)
        if len(missing):
            new = np.asarray(compute(missing), dtype=np.float16)
            for i, row in zip(missing, new, strict=True):
                self._rows[keys[i]] = row
            import hashlib

            name = hashlib.sha256(b"".join(keys[i] for i in missing)).hexdigest()[:16]
            atomic_write(self.dir / f"{name}.npz", lambda f: np.savez(f, hashes=hashes[missing], features=new))
        return np.stack([self._rows[k] for k in keys]).astype(np.float32), len(missing)


def _train_head_only(
    payload: Payload,
    pool: Pool,
    out_dir: Path,
    cfg: TrainConfig,
    eval_split: tuple[np.ndarray, np.ndarray] | None,
    sha: str | None,
    coverage: Coverage | None,
    device: torch.device,
    t0: float,
    progress: Callable[[float, str], None] | None,
) -> dict[str, Any]:
    report = progress or (lambda _f, _m: None)
    arch = pnn.DEFAULT_BACKBONE if cfg.arch == "smallcnn" else cfg.arch
    side = cfg.image_size or pretrained_input_side(pool)
    head = _fit_head(payload, pool, cfg, arch, side, device, report)
    probe, feats, labels, computed = head.probe, head.feats, head.labels, head.computed
    config = asdict(cfg) | {"arch": arch, "image_size": side, "head_only": True}
    metrics: dict[str, Any] = _run_metrics(payload, sha, config, coverage) | {
        "mode": "head-only (linear probe on frozen pretrained features)",
        "features_computed": computed,
        "features_cached": len(labels) - computed,
        "probe": {"l2": probe.l2, "temperature": round(probe.temperature, 4)},
        "train_accuracy_on_pseudo_labels": probe.accuracy(feats, labels),
        "device": str(device),
    }
    if eval_split is not None:
        ex, ey = eval_split
        chunks = (ex[s : s + 256] for s in range(0, len(ex), 256))
        metrics["test_accuracy"] = probe.accuracy(head.embed(chunks, len(ex), "embedding the eval split"), ey)
        metrics["n_test"] = len(ey)
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    atomic_write(
        out_dir / "probe.npz",
        lambda f: np.savez(f, **probe.as_arrays(), arch=arch, image_size=side, classes=np.asarray(payload.classes)),
    )
    atomic_write_bytes(out_dir / METRICS, json.dumps(metrics, indent=2).encode())
    return metrics


@dataclass
class _Head:
    probe: Any  # LinearProbe
    feats: np.ndarray
    labels: np.ndarray
    computed: int
    embed: Callable[[Any, int, str], np.ndarray]


def _fit_head(
    payload: Payload,
    pool: Pool,
    cfg: TrainConfig,
    arch: str,
    side: int,
    device: torch.device,
    report: Callable[[float, str], None],
) -> _Head:
    """Frozen-backbone features of the payload's items (cached by item hash) and the linear probe on them."""
    from plada.client.cache import default_cache_dir
    from plada.shared.probe import fit_linear_probe

    try:
        body = pnn.create_backbone(arch, _weights_dir(cfg)).to(device)
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from exc
    runner = pnn.for_cpu_inference(body, (side, side), onnx=cfg.onnx) if device.type == "cpu" else body
    idx = np.asarray(payload.indices)

    def embed(images: Any, n: int, what: str) -> np.ndarray:
        done = 0

        def tick(k: int) -> None:
            nonlocal done
            done += k
            report(done / max(n, 1), f"{what}: {done:,}/{n:,}")

        z, _ = pnn.predict(runner, images, size=(side, side), channels=3, device=device, progress=tick)
        return z

    def pool_features(pos: np.ndarray) -> np.ndarray:
        order = [pos[s : s + 256] for s in range(0, len(pos), 256)]
        return embed(pnn.batches_of(pnn.PoolItems(pool, idx), order, device), len(pos), "embedding payload items")

    store = FeatureStore(Path(cfg.feature_cache) if cfg.feature_cache else default_cache_dir() / "features", arch, side)
    feats, computed = store.get_many(pool.feature_keys(idx), pool_features)
    labels = np.asarray(payload.labels, dtype=np.int64)
    report(1.0, "fitting the linear head")
    probe = fit_linear_probe(feats, labels, len(payload.classes), seed=cfg.seed)
    return _Head(probe, feats, labels, computed, embed)


def init_classifier_from_probe(model: torch.nn.Module, probe: Any) -> None:
    """Set a timm model's classifier to the probe's calibrated logits (standardisation folded in): fine-tuning
    then starts from a good head instead of a zero one, so early gradients do not scramble the pretrained
    body to fit a random classifier (linear probing, then fine-tuning: LP-FT)."""
    get_head = getattr(model, "get_classifier", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        raise InvalidDataError(f"{type(model).__name__} has no linear classifier to initialise from a probe")
    w = probe.weight / probe.sd[:, None] / probe.temperature
    b = (probe.bias - (probe.mu / probe.sd) @ probe.weight) / probe.temperature
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w.T, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(b, dtype=head.bias.dtype))
