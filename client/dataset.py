"""``PayloadDataset``: the (pool image, pseudo-label) pairs a payload names, as a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from plada.client.coverage import DEFAULT_MIN_COVERAGE, usable_items
from plada.shared.payload import Payload, check_pool
from plada.shared.pool import Pool


class PayloadDataset(Dataset[tuple[Any, int]]):
    """Yields ``(image, label)`` like a torchvision dataset: a PIL image (mode ``L`` or ``RGB``; ``mode``
    converts, e.g. ``"RGB"`` for ImageNet-style timm transforms) passed through ``transform`` when given, so
    ``torchvision.transforms`` and ``timm.data.create_transform`` work unchanged. ``output="numpy"`` yields
    uint8 HWC arrays instead. ``classes`` and ``targets`` mirror torchvision's ``ImageFolder``.

    The pool must be the payload's pool: construction fails with ``PoolMismatchError`` otherwise. On an
    attached copy (``plada-client pool attach``) each item is checked first and only those the copy holds as the
    server labelled them are yielded; ``coverage`` says how many (``CoverageError`` below ``min_coverage``).
    """

    def __init__(
        self,
        payload: Payload,
        pool: Pool,
        transform: Callable[[Any], Any] | None = None,
        *,
        mode: str | None = None,
        output: str = "pil",
        min_coverage: float = DEFAULT_MIN_COVERAGE,
    ) -> None:
        if output not in ("pil", "numpy"):
            raise ValueError("output must be 'pil' or 'numpy'")
        check_pool(payload, pool)
        payload, self.coverage = usable_items(payload, pool, min_coverage)
        self.payload, self.pool, self.transform = payload, pool, transform
        self.mode, self.output = mode, output
        self.classes = list(payload.classes)
        self.targets = payload.labels.tolist()

    def __len__(self) -> int:
        return len(self.payload)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img: Any = self.pool.batch(self.payload.indices[i : i + 1])[0]
        if self.output == "pil":
            from PIL import Image

            img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            if self.mode and img.mode != self.mode:
                img = img.convert(self.mode)
        return (self.transform(img) if self.transform else img), int(self.payload.labels[i])

    def arrays(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All kept images at once (n, H, W, C) uint8 and labels: the fast path for small pools."""
        idx = self.payload.indices
        parts = [self.pool.batch(idx[s : s + chunk]) for s in range(0, len(idx), chunk)]
        x = np.concatenate(parts) if parts else np.zeros((0, *self.pool.image_shape), np.uint8)
        return x, self.payload.labels.copy()
