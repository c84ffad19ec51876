"""``PayloadDataset``: the (pool image, pseudo-label) pairs a payload names, as a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from plada.client.api import check_pool
from plada.shared.payload import Payload
from plada.shared.pool import Pool


class PayloadDataset(Dataset[tuple[Any, int]]):
    """Yields ``(image, label)``; image is uint8 HWC numpy unless ``transform`` turns it into something else.

    The pool must be the payload's pool: construction fails with ``PoolMismatchError`` otherwise.
    """

    def __init__(self, payload: Payload, pool: Pool, transform: Callable[[np.ndarray], Any] | None = None) -> None:
        check_pool(payload, pool)
        self.payload, self.pool, self.transform = payload, pool, transform
        self.classes = list(payload.classes)

    def __len__(self) -> int:
        return len(self.payload)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.pool.batch(self.payload.indices[i : i + 1])[0]
        return (self.transform(img) if self.transform else img), int(self.payload.labels[i])

    def arrays(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All kept images at once (n, H, W, C) uint8 and labels: the fast path for small pools."""
        idx = self.payload.indices
        parts = [self.pool.batch(idx[s : s + chunk]) for s in range(0, len(idx), chunk)]
        x = np.concatenate(parts) if parts else np.zeros((0, *self.pool.image_shape), np.uint8)
        return x, self.payload.labels.copy()
