"""Payload body codecs: ``paper-v1`` (the paper's fixed-width indices + zstd, readable by format-1 clients),
``entropy-v1`` and ``entropy-v2`` (range-coded index gaps and labels, plada's, built from ``rangecoding``).
``shared/payload.py`` frames them and picks the smallest.

Every codec is a module with the same face (``Codec``): its name, the container format that carries it,
whether it can carry priority tiers, and one ``encode``/``decode`` signature. The registry is the one list of
codec names (the task spec's schema and the OpenAPI enum are generated from it).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from plada.shared.pool import PoolLayout


class Codec(Protocol):
    NAME: str
    FORMAT: int
    CARRIES_TIERS: bool

    def encode(
        self,
        indices: np.ndarray,
        labels: np.ndarray,
        *,
        n_pool: int,
        n_classes: int,
        layout: PoolLayout | None = ...,
        tiers: np.ndarray | None = ...,
    ) -> tuple[dict[str, Any], bytes]: ...

    def decode(
        self,
        codec: dict[str, Any],
        body: bytes,
        *,
        n_pool: int,
        n_items: int,
        n_classes: int,
        layout: PoolLayout | None = ...,
        n_tiers: int = ...,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...


def registry() -> dict[str, Codec]:
    """Codecs by name, oldest format first (``auto`` keeps the first of equally small bodies: the payload the
    most clients can read)."""
    from plada.shared.codecs import entropy, entropy2, paper

    return {c.NAME: c for c in (paper, entropy, entropy2)}
