"""Student training on a tiny real pool: learns, checkpoints, resumes, evaluates with class mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plada.client import PayloadDataset, TrainConfig, load_eval_split, train_student
from plada.shared import nn as pnn
from plada.shared.errors import InvalidDataError, PoolMismatchError
from plada.shared.payload import Payload
from plada.shared.pool import Pool, write_array_pool


def _bars(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two trivially separable classes: a horizontal or a vertical bar, at random positions."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 16, 16), np.uint8)
    y = rng.integers(0, 2, n)
    for i in range(n):
        p = rng.integers(2, 14)
        if y[i]:
            x[i, :, p] = 255
        else:
            x[i, p, :] = 255
    return x, y


@pytest.fixture()
def bar_pool(tmp_path: Path) -> tuple[Pool, np.ndarray]:
    x, y = _bars(200)
    return write_array_pool(tmp_path / "pool", "bars", x, [f"b{i}" for i in range(200)]), y


def _payload(pool: Pool, labels: np.ndarray, keep: int = 120) -> Payload:
    idx = np.arange(keep)
    return Payload(
        indices=idx,
        labels=labels[:keep],
        classes=("horizontal", "vertical"),
        pool_id=pool.pool_id,
        n_pool=len(pool),
        task="bars",
        version=1,
        pool_name=pool.name,
    )


def test_student_learns_checkpoints_and_resumes(bar_pool: tuple[Pool, np.ndarray], tmp_path: Path) -> None:
    pool, labels = bar_pool
    test_x, test_y = _bars(100, seed=1)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3)
    m = train_student(
        _payload(pool, labels), pool, tmp_path / "run", cfg, eval_split=(test_x, test_y), payload_bytes=b"x"
    )
    assert m["test_accuracy"] >= 0.9 and m["resumed_from_epoch"] == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 5
    again = train_student(
        _payload(pool, labels), pool, tmp_path / "run", cfg, eval_split=(test_x, test_y), payload_bytes=b"x"
    )
    assert again["resumed_from_epoch"] == 6 and again["test_accuracy"] == m["test_accuracy"]


def test_dataset_refuses_another_pool(bar_pool: tuple[Pool, np.ndarray], tmp_path: Path) -> None:
    pool, labels = bar_pool
    other = write_array_pool(
        tmp_path / "other", "other", np.zeros((200, 16, 16), np.uint8), [f"o{i}" for i in range(200)]
    )
    with pytest.raises(PoolMismatchError, match="local pool is other"):
        PayloadDataset(_payload(pool, labels), other)
    ds = PayloadDataset(_payload(pool, labels), pool, transform=lambda im: im.sum(), output="numpy")
    assert len(ds) == 120 and ds[3][1] == labels[3] and ds[3][0] == 16 * 255


def test_dataset_works_with_torchvision_and_timm_transforms(bar_pool: tuple[Pool, np.ndarray]) -> None:
    from PIL import Image
    from timm.data import create_transform
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    pool, labels = bar_pool
    payload = _payload(pool, labels)
    plain = PayloadDataset(payload, pool)
    img, label = plain[0]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (16, 16) and label == labels[0]
    assert plain.targets == labels[:120].tolist() and plain.classes == ["horizontal", "vertical"]
    tv = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    xb, yb = next(iter(DataLoader(PayloadDataset(payload, pool, transform=tv), batch_size=8, shuffle=False)))
    assert xb.shape == (8, 1, 32, 32) and yb.tolist() == labels[:8].tolist() and xb.min() >= -1.0
    tm = create_transform(input_size=(3, 48, 48), is_training=True)
    xb, _ = next(iter(DataLoader(PayloadDataset(payload, pool, transform=tm, mode="RGB"), batch_size=4)))
    assert xb.shape == (4, 3, 48, 48) and xb.dtype == torch.float32


def test_eval_split_maps_classes_by_name(tmp_path: Path) -> None:
    path = tmp_path / "test.npz"
    np.savez(path, x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1, 1]), classes=np.array(["b", "a"]))
    _, y = load_eval_split(path, ["a", "b"])
    assert y.tolist() == [1, 0, 0]
    with pytest.raises(InvalidDataError, match="not in the payload"):
        load_eval_split(path, ["a", "c"])


def test_timm_models_are_available_for_small_images() -> None:
    model = pnn.create_model("resnet18", in_chans=1, num_classes=3)
    x = pnn.to_input(np.zeros((2, 28, 28, 1), np.uint8), size=(28, 28), channels=1, device=torch.device("cpu"))
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown model"):
        pnn.create_model("definitely-not-a-model", in_chans=1, num_classes=3)


def test_to_input_converts_channels_and_size() -> None:
    rgb = np.full((2, 10, 12, 3), 255, np.uint8)
    t = pnn.to_input(rgb, size=(28, 28), channels=1, device=torch.device("cpu"))
    assert t.shape == (2, 1, 28, 28) and torch.allclose(t, torch.ones_like(t))


def test_same_seed_same_model(bar_pool: tuple[Pool, np.ndarray], tmp_path: Path) -> None:
    """Initial weights come from the seed too: one spec, one model (a bug once made teachers vary by ±20 pts)."""
    pool, labels = bar_pool
    cfg = TrainConfig(epochs=2, batch_size=32)
    for name in ("a", "b"):
        train_student(_payload(pool, labels), pool, tmp_path / name, cfg)
    wa, wb = (torch.load(tmp_path / n / "model.pt", weights_only=False)["model"] for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = train_student(_payload(pool, labels), pool, tmp_path / "c", TrainConfig(epochs=2, batch_size=32, seed=1))
    wc = torch.load(tmp_path / "c" / "model.pt", weights_only=False)["model"]
    assert other["config"]["seed"] == 1 and not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_max_tier_trains_on_the_prefix(bar_pool: tuple[Pool, np.ndarray], tmp_path: Path) -> None:
    pool, labels = bar_pool
    base = _payload(pool, labels)
    tiers = np.arange(len(base)) % 2
    tiered = Payload(
        indices=base.indices,
        labels=base.labels,
        classes=base.classes,
        pool_id=base.pool_id,
        n_pool=base.n_pool,
        task="bars",
        version=1,
        pool_name=base.pool_name,
        tiers=tiers,
    )
    m = train_student(tiered, pool, tmp_path / "run", TrainConfig(epochs=1, max_tier=0))
    assert m["n_items"] == int((tiers == 0).sum()) == 60
