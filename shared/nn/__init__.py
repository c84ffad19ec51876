"""Torch pieces both sides need: the networks and their weights, input conversion, a training loop, inference.

The server's teacher and the client's student are the same kind of thing (an image classifier trained with
AdamW + cosine on uint8 images), so the loop lives here once. On CUDA the same code uses bf16 autocast,
channels_last and pinned host memory; on CPU it runs in fp32 (and frozen pretrained bodies through ONNX
Runtime). Modules: ``models`` (networks, local weights), ``onnx`` (CPU inference), ``data`` (devices, inputs,
pool batches), ``loop`` (fit, predict, accuracy). Nothing here reads configuration from the environment:
where weights live and whether ONNX is used are the caller's arguments.
"""

from plada.shared.nn.data import (
    PoolItems,
    batches_of,
    pick_device,
    pool_batches,
    save_checkpoint,
    set_threads,
    to_input,
)
from plada.shared.nn.loop import FitConfig, Progress, accuracy, fit, predict
from plada.shared.nn.models import (
    DEFAULT_BACKBONE,
    WEIGHT_PACKAGES,
    WEIGHT_SUFFIXES,
    Norm,
    SmallCNN,
    backbone_available,
    create_backbone,
    create_model,
    find_weights,
    freeze_body,
    load_pretrained,
    load_state_dict,
)
from plada.shared.nn.onnx import OrtBackbone, for_cpu_inference

__all__ = [
    "DEFAULT_BACKBONE",
    "WEIGHT_PACKAGES",
    "WEIGHT_SUFFIXES",
    "FitConfig",
    "Norm",
    "OrtBackbone",
    "PoolItems",
    "Progress",
    "SmallCNN",
    "accuracy",
    "backbone_available",
    "batches_of",
    "create_backbone",
    "create_model",
    "find_weights",
    "fit",
    "for_cpu_inference",
    "freeze_body",
    "load_pretrained",
    "load_state_dict",
    "pick_device",
    "pool_batches",
    "predict",
    "save_checkpoint",
    "set_threads",
    "to_input",
]
