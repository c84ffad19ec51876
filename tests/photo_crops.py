"""Real photos for tests, offline: scikit-image's sample pictures and random crops of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")


def photo(name: str) -> np.ndarray:
    """One of scikit-image's sample photos as RGB uint8 (grey ones repeated over the channels)."""
    from PIL import Image

    return np.asarray(Image.fromarray(getattr(skimage_data, name)()).convert("RGB"))


def crops(img: np.ndarray, n: int, size: int, seed: int, smallest: float = 0.6) -> np.ndarray:
    """Random crops covering ``smallest``-100 % of each side, resized to ``size``: many views of one photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w, _ = img.shape
    out = []
    for _ in range(n):
        ch, cw = int(h * rng.uniform(smallest, 1.0)), int(w * rng.uniform(smallest, 1.0))
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(np.asarray(Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw]).resize((size, size))))
    return np.stack(out)


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")


def crop_folder(root: Path, per: int, size: int, *, seed: int = 1, smallest: float = 0.5) -> Path:
    """``root/src/<photo>/<i>.png``: ``per`` crops of each of the six ``PHOTOS`` at ``size`` px, a pool's
    folder tree of real pictures (one synset-like folder per photo). Returns ``root/src``."""
    from PIL import Image

    for name in PHOTOS:
        (root / "src" / name).mkdir(parents=True)
        for i, crop in enumerate(crops(photo(name), per, size, seed=seed, smallest=smallest)):
            Image.fromarray(crop).save(root / "src" / name / f"{i}.png")
    return root / "src"
