"""plada client: fetch verified payloads and train students on the local pool."""

from plada.client.agent import Agent, AgentConfig
from plada.client.api import Download, PladaClient, check_pool
from plada.client.cache import PayloadCache, default_cache_dir
from plada.client.dataset import PayloadDataset
from plada.client.train import TrainConfig, load_eval_split, train_student

__all__ = [
    "Agent",
    "AgentConfig",
    "Download",
    "PayloadCache",
    "PayloadDataset",
    "PladaClient",
    "TrainConfig",
    "check_pool",
    "default_cache_dir",
    "load_eval_split",
    "train_student",
]
