"""Which teacher architectures a spec may name, checked at POST: the built-in ones and timm's model names.

A spec naming ``no_such_arch`` used to be accepted (202) and fail three worker attempts later. The API process
must not import torch (nor timm, which imports it), so timm's model list is read once in a subprocess and kept
in ``<data_dir>/cache/timm-models-<version>.txt``; the first publish after an upgrade of timm pays ~6 s.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import threading
from pathlib import Path

from plada.shared.files import atomic_write_bytes

BUILT_IN = ("auto", "smallcnn", "probe")
_LOCK = threading.Lock()
_KNOWN: dict[Path, frozenset[str] | None] = {}


def timm_models(cache_dir: Path) -> frozenset[str] | None:
    """timm's model names (None when timm is not installed: the worker then says what is missing)."""
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = cache_dir / f"timm-models-{version}.txt"
    with _LOCK:
        if path not in _KNOWN:
            if not path.is_file():
                out = subprocess.run(
                    [sys.executable, "-c", "import timm; print('\\n'.join(timm.list_models()))"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                if out.returncode != 0:
                    return None  # cannot tell: let the worker decide rather than refuse a good name
                atomic_write_bytes(path, out.stdout.encode())
            _KNOWN[path] = frozenset(path.read_text().split())
        return _KNOWN[path]


def unknown_arch(arch: str, cache_dir: Path) -> str | None:
    """Why ``arch`` cannot be a teacher, or None when it can (or when that cannot be told here)."""
    if arch in BUILT_IN:
        return None
    models = timm_models(cache_dir)
    if models is None or arch.split(".", 1)[0] in models:
        return None
    return (
        f"unknown teacher arch {arch!r}: use {', '.join(BUILT_IN)} or a timm model name (e.g. resnet18, "
        "efficientnet_lite0; timm.list_models() lists them)"
    )
