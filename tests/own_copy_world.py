"""A small real-picture folder pool for the own-copy tests: mini-world items (Fashion-MNIST, Animal-MNIST,
MNIST) as PNG files in one folder per source, indexed and fingerprinted as the server does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plada.shared.pool import Pool, fingerprint_pool, index_image_folder

SOURCES = {"fashion": 0, "animals": 60_000, "digits": 65_000}  # first pool position of each source


def write_tiny_pool(mini: Pool, root: Path, per_source: int = 60, offset: int = 0) -> tuple[Path, Pool]:
    """``root/images/<source>/<source>_<i>.png`` and the pool folder ``root/pools/tiny-v1`` over it."""
    from PIL import Image

    images = root / "images"
    for name, start in SOURCES.items():
        (images / name).mkdir(parents=True, exist_ok=True)
        idx = np.arange(start + offset, start + offset + per_source)
        for i, img in zip(idx, mini.batch(idx), strict=True):
            Image.fromarray(img[..., 0]).save(images / name / f"{name}_{i}.png")
    pool = index_image_folder(images, root / "pools" / "tiny-v1", "tiny-v1", channels=1)
    fingerprint_pool(pool)
    return images, pool
