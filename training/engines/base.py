"""The engine interface: how gradients become updates, and the few collectives a loop needs.

The trainer never touches DDP, DeepSpeed or process groups directly; it asks its engine to
``prepare`` the model and optimizer, run ``backward``/``step``, hand back the full adapter
state (gathered under ZeRO-3), save/load the optimizer state, and do the collectives a
training loop needs (barrier, broadcast, gather, mean). Engines receive
:class:`EngineSettings`, the handful of run settings they use, not the whole run config.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch

from ..runtime import Precision

NamedParams = Callable[[], list[tuple[str, torch.nn.Parameter]]]


def world_from_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by torchrun, accelerate launch or Ray Train."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


@dataclass(frozen=True)
class EngineSettings:
    """What an engine reads from the run config (the field names are kept for error messages)."""

    batch_size: int                  # train.batch_size (per rank, per micro-batch)
    grad_accum: int                  # train.grad_accum
    max_grad_norm: Optional[float]   # optim.max_grad_norm (None or 0: no clipping)
    mixed_precision: str             # model.mixed_precision
    deepspeed_enabled: bool = False  # deepspeed.config or deepspeed.zero_stage set
    deepspeed_config: Optional[str] = None  # deepspeed.config (a JSON file)
    zero_stage: Optional[int] = None        # deepspeed.zero_stage (overrides the JSON)

    @classmethod
    def from_run_config(cls, cfg: Any) -> "EngineSettings":
        return cls(batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
                   max_grad_norm=cfg.optim.max_grad_norm, mixed_precision=cfg.model.mixed_precision,
                   deepspeed_enabled=cfg.deepspeed.enabled, deepspeed_config=cfg.deepspeed.config,
                   zero_stage=cfg.deepspeed.zero_stage)


class Engine(abc.ABC):
    """One rank's view of training; ``kind`` is recorded in checkpoints (resume needs the same)."""

    kind: str

    def __init__(self, settings: EngineSettings, device: torch.device, precision: Precision) -> None:
        self.settings = settings
        self.device = device
        self.precision = precision
        self.rank, self.local_rank, self.world_size = 0, 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def description(self) -> str:
        return f"{self.kind} ({self.world_size} rank{'s' if self.world_size > 1 else ''})"

    # ---------------------------------------------------------------- model and optimizer

    @abc.abstractmethod
    def model_loading(self) -> ContextManager[Any]:
        """Context for loading the pipeline (the DeepSpeed engine turns off ZeRO-3 init there)."""

    @abc.abstractmethod
    def prepare(self, model: torch.nn.Module, params: list[torch.nn.Parameter],
                optimizer: torch.optim.Optimizer) -> torch.nn.Module:
        """Wrap for training; returns what the forward pass must call."""

    @abc.abstractmethod
    def set_lr(self, lr: float) -> None: ...

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backward of one micro-batch's mean loss (the engine divides by grad_accum)."""

    @abc.abstractmethod
    def step(self) -> float:
        """Clip, update, zero gradients; returns the global gradient norm before clipping."""

    @abc.abstractmethod
    def adapter_state(self, named: NamedParams) -> dict[str, torch.Tensor]:
        """The full adapter as fp32 CPU tensors, on every rank (a collective under ZeRO)."""

    @abc.abstractmethod
    def save_optimizer(self, folder: Path) -> None:
        """This rank's optimizer state into ``folder`` (a collective under DeepSpeed)."""

    @abc.abstractmethod
    def load_optimizer(self, folder: Path) -> None: ...

    @abc.abstractmethod
    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds for parameters, gradients and optimizer state."""

    # ---------------------------------------------------------------- collectives

    @abc.abstractmethod
    def barrier(self) -> None: ...

    @abc.abstractmethod
    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""

    @abc.abstractmethod
    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""

    @abc.abstractmethod
    def mean(self, value: float) -> float:
        """Mean of ``value`` over ranks (also keeps ranks in lock-step)."""

    def close(self) -> None:
        """Release what the engine holds (called once, at the end of a run)."""
