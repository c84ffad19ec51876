"""How and where a pipeline runs, as one value passed down from the process that starts it.

The worker builds it from its ``Settings`` (``Settings.run_config()``), a benchmark or a test builds it
directly; nothing below ``run_pipeline`` reads the environment. So the same pure function runs in the worker,
in the benchmarks and on Ray actors with the options it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the web app imports Settings, and so this module: it must not pay for torch
    import torch

    from plada.server.pipeline.blocks import Streaming

Executor = Literal["local", "ray"]
EXECUTORS: tuple[Executor, ...] = ("local", "ray")


@dataclass(frozen=True)
class RunConfig:
    """The defaults are a laptop's: this process, the CPU, no weights folder, ONNX Runtime when installed."""

    device: torch.device = field(default_factory=lambda: _cpu())
    executor: Executor = "local"  # where the pool pass runs: DataLoader workers here, or Ray Data actors
    ray_address: str = ""  # '' starts a local Ray
    ray_actors: int = 2  # CPU model actors when the cluster has no GPUs
    logits_ram_bytes: int = 512 << 20  # pool logits above this (as float32) spill to a float16 memory map
    block_bytes: int = 64 << 20  # pool-wide passes hold one block of this size (float32), not the pool
    scratch_dir: Path | None = None  # where spilled logits are mapped (None: the system temp folder)
    weights_dir: Path | None = None  # local pretrained weights (then weights packages); never downloaded
    onnx: bool = True  # frozen pretrained bodies through ONNX Runtime on the CPU when it is installed

    def streaming(self) -> Streaming:
        """How pool-wide passes over features and logits run: blocks of ``block_bytes``, here or on Ray."""
        from plada.server.pipeline.blocks import Streaming

        return Streaming(self.block_bytes, self.executor, self.ray_address)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; use one of {', '.join(EXECUTORS)}")


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")
