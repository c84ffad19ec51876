"""plada client: fetch verified payloads and train students on the local pool.

Names are imported on first use (PEP 562), so ``import plada.client`` — and every ``plada-client`` command
that does not train — does not pay for torch; ``from plada.client import train_student`` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name → the module that defines it: the whole public surface, one place
_EXPORTS = {
    "Agent": "plada.client.agent",
    "AgentConfig": "plada.client.agent",
    "Download": "plada.client.api",
    "PayloadCache": "plada.client.cache",
    "PayloadDataset": "plada.client.dataset",
    "PladaClient": "plada.client.api",
    "TrainConfig": "plada.client.train",
    "check_pool": "plada.shared.payload",
    "default_cache_dir": "plada.client.cache",
    "load_eval_split": "plada.client.train",
    "train_student": "plada.client.train",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ below imports on first use
    from plada.client.agent import Agent as Agent
    from plada.client.agent import AgentConfig as AgentConfig
    from plada.client.api import Download as Download
    from plada.client.api import PladaClient as PladaClient
    from plada.client.cache import PayloadCache as PayloadCache
    from plada.client.cache import default_cache_dir as default_cache_dir
    from plada.client.dataset import PayloadDataset as PayloadDataset
    from plada.client.train import TrainConfig as TrainConfig
    from plada.client.train import load_eval_split as load_eval_split
    from plada.client.train import train_student as train_student
    from plada.shared.payload import check_pool as check_pool


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'plada.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
