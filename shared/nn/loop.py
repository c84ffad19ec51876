"""The training loop and batched inference both sides share (AdamW + cosine on uint8 images)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plada.shared.nn.data import PoolItems, batches_of, to_input
from plada.shared.nn.models import SmallCNN

Progress = Callable[[float, str], None]


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 px (pad + crop): cheap and label-preserving for small images."""
    _, _, h, w = x.shape
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return xp[:, :, dy : dy + h, dx : dx + w]


@dataclass
class FitConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    augment: bool = True


def fit(
    model: nn.Module,
    x: np.ndarray | PoolItems,
    y: np.ndarray,
    cfg: FitConfig,
    *,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    progress: Progress | None = None,
    start_epoch: int = 0,
    on_epoch_end: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Train with AdamW and a per-step cosine schedule; returns the optimizer (for checkpoints).

    ``start_epoch`` and ``optimizer_state`` resume an interrupted run at an epoch boundary.
    """
    if len(x) == 0:
        raise ValueError("no training examples")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + start_epoch)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    n = len(x)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    y_t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    hw = (int(size[0]), int(size[1]))
    norm = getattr(model, "plada_norm", None)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        for m in model.modules():  # a frozen body keeps its BatchNorm statistics (see freeze_body)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        perm = torch.randperm(n, generator=gen)
        order = [perm[s * cfg.batch_size : (s + 1) * cfg.batch_size].numpy() for s in range(steps_per_epoch)]
        loss_sum, seen = 0.0, 0
        for s, x_raw in enumerate(batches_of(x, order, device)):
            step = epoch * steps_per_epoch + s
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb = to_input(x_raw, size=hw, channels=channels, device=device, norm=norm)
            if cfg.augment:
                xb = _augment(xb, gen)
            yb = y_t[idx].to(device, non_blocking=True)
            with _autocast(device):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            if progress and (s % 10 == 0 or s == steps_per_epoch - 1):
                frac = (epoch + (s + 1) / steps_per_epoch) / cfg.epochs
                progress(frac, f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f}")
        if on_epoch_end:
            on_epoch_end(epoch, loss_sum / max(seen, 1), opt)
    return opt


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Any,
    *,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    want_features: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and penultimate features for SmallCNN) over an iterable of uint8 image batches."""
    model.eval()
    model.to(device)
    logits: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    hw = (int(size[0]), int(size[1]))
    norm = getattr(model, "plada_norm", None)
    for xb_np in batches:
        xb = to_input(xb_np, size=hw, channels=channels, device=device, norm=norm)
        with _autocast(device):
            if want_features and isinstance(model, SmallCNN):
                f = model.features(xb)
                z = model.head(f)
                feats.append(f.float().cpu().numpy().astype(np.float16))
            else:
                z = model(xb)
        logits.append(z.float().cpu().numpy())
        if progress:
            progress(len(xb_np))
    out = np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)
    return out, (np.concatenate(feats) if feats else None)


def accuracy(
    model: nn.Module,
    x: np.ndarray | PoolItems,
    y: np.ndarray,
    *,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    batch_size: int = 512,
) -> float:
    if len(x) == 0:
        return float("nan")
    order = [np.arange(i, min(i + batch_size, len(x))) for i in range(0, len(x), batch_size)]
    z, _ = predict(
        model,
        batches_of(x, order, device),
        size=size,
        channels=channels,
        device=device,
    )
    return float((z.argmax(1) == np.asarray(y)).mean())
