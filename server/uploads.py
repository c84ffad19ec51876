"""The server's side of the publisher's upload: the checked arrays are stored for the worker. Reading and
checking the data is ``plada.shared.targetdata``'s (the client's ``--eval`` split reads through it too)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from plada.shared.files import atomic_write
from plada.shared.targetdata import (
    DEFAULT_LIMITS,
    IMAGE_FORMATS,
    MAX_ITEMS,
    MIN_PER_CLASS,
    ArchiveLimits,
    check_archive,
    peek_central_directory,
    read_npz,
    read_target_data,
    read_zip,
)

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_FORMATS",
    "MAX_ITEMS",
    "MIN_PER_CLASS",
    "ArchiveLimits",
    "check_archive",
    "load_upload",
    "peek_central_directory",
    "read_npz",
    "read_target_data",
    "read_zip",
    "store_upload",
]


def store_upload(uploads_dir: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write the checked arrays atomically under a fresh name; the worker reads them from here. Compressed:
    an upload of near-constant images must not become a big file on the server's disk."""
    path = uploads_dir / f"{uuid.uuid4().hex}.npz"
    atomic_write(path, lambda f: np.savez_compressed(f, x=x, y=y))
    return path


def load_upload(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["x"], z["y"]
