"""Student training on the client: the payload's pool items with their pseudo-labels, then evaluation.

Checkpoints after every epoch (atomic), resumes from the last one, writes ``metrics.json`` at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plada.client.dataset import PayloadDataset
from plada.shared import nn as pnn
from plada.shared.errors import InvalidDataError
from plada.shared.payload import Payload, payload_sha256
from plada.shared.pool import Pool, atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


@dataclass
class TrainConfig:
    arch: str = "smallcnn"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    max_tier: int | None = None  # train on priority tiers 0..max_tier only (less compute), None = all


def load_eval_split(path: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """An ``.npz`` with ``x``, ``y`` and optionally ``classes``; labels are mapped to the payload's classes."""
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
    x: np.ndarray | pnn.PoolItems
    if getattr(pool, "decode_bound", False):  # JPEG folders, tar shards: decode while training, in workers
        x, y = pnn.PoolItems(pool, np.asarray(payload.indices)), np.asarray(payload.labels, dtype=np.int64)
    else:
        x, y = PayloadDataset(payload, pool).arrays()
    model = pnn.create_model(cfg.arch, in_chans=c, num_classes=len(payload.classes), seed=cfg.seed)
    sha = payload_sha256(payload_bytes) if payload_bytes is not None else payload.sha256
    ckpt_path = out_dir / CHECKPOINT
    start_epoch, opt_state = 0, None
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("payload_sha256") == sha and ckpt.get("config") == asdict(cfg):
            model.load_state_dict(ckpt["model"])
            start_epoch, opt_state = int(ckpt["epoch"]) + 1, ckpt["optimizer"]

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
    metrics: dict[str, Any] = {
        "task": payload.task,
        "version": payload.version,
        "payload_sha256": sha,
        "pool_id": payload.pool_id,
        "n_items": len(payload),
        "config": asdict(cfg),
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
