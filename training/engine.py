"""How gradients become updates: one interface, a single-process and a distributed implementation.

The trainer never touches DDP, DeepSpeed or process groups directly; it asks its engine to
``prepare`` the model and optimizer, run ``backward``/``step``, hand back the full adapter
state (gathered under ZeRO-3), save/load the optimizer state, and do the few collectives a
training loop needs (barrier, broadcast, gather). ``LocalEngine`` is the plain one-process
path; ``training.distributed.AccelerateEngine`` (the only module that imports DeepSpeed) is
used when there is more than one rank or DeepSpeed is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError, flatten_optimizer, unflatten_optimizer
from .config import RunConfig
from .runtime import Precision

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


def world_from_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by torchrun, accelerate launch or Ray Train."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


class Engine:
    """Single process, no wrappers: what ``lorabench train`` runs by default."""

    kind = "local"

    def __init__(self, cfg: RunConfig, device: torch.device, precision: Precision) -> None:
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.rank, self.local_rank, self.world_size = 0, 0, 1
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.params: list[torch.nn.Parameter] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def description(self) -> str:
        return f"{self.kind} ({self.world_size} rank{'s' if self.world_size > 1 else ''})"

    # ---------------------------------------------------------------- model and optimizer

    def model_loading(self) -> ContextManager[Any]:
        """Context for loading the pipeline (the distributed engine turns off ZeRO-3 init there)."""
        return contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module, params: list[torch.nn.Parameter],
                optimizer: torch.optim.Optimizer) -> torch.nn.Module:
        """Wrap for training; returns what the forward pass must call."""
        self.optimizer, self.params, self._model = optimizer, params, model
        # fp16 needs loss scaling (small gradients underflow); a disabled scaler is a passthrough.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.name == "fp16")
        return model

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backward of one micro-batch's mean loss (scaled here by 1/grad_accum)."""
        self.scaler.scale(loss / self.cfg.train.grad_accum).backward()

    def step(self) -> float:
        """Clip, update, zero gradients; returns the global gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
        self.scaler.step(self.optimizer)  # skips the step on inf/nan gradients under fp16
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def adapter_state(self, named: Callable[[], list[tuple[str, torch.nn.Parameter]]]
                      ) -> dict[str, torch.Tensor]:
        """The full adapter as fp32 CPU tensors, on every rank (a collective under ZeRO)."""
        return {k: p.detach().to("cpu", torch.float32).clone().contiguous() for k, p in named()}

    # ---------------------------------------------------------------- optimizer state

    def save_optimizer(self, folder: Path) -> None:
        tensors, meta = flatten_optimizer(self.optimizer.state_dict())
        meta["grad_scaler"] = self.scaler.state_dict()
        save_file(tensors, str(folder / OPTIMIZER_TENSORS))
        (folder / OPTIMIZER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))

    def load_optimizer(self, folder: Path) -> None:
        for name in (OPTIMIZER_TENSORS, OPTIMIZER_META):
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder / name} is missing: this checkpoint was not written by "
                                      f"the single-process engine, or is incomplete")
        meta = json.loads((folder / OPTIMIZER_META).read_text())
        self.optimizer.load_state_dict(unflatten_optimizer(load_file(str(folder / OPTIMIZER_TENSORS)), meta))
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])

    # ---------------------------------------------------------------- collectives (trivial here)

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def mean(self, value: float) -> float:
        """Mean of ``value`` over ranks."""
        return value

    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds for parameters, gradients and optimizer state."""
        params = sum(p.numel() * p.element_size() for p in self._all_params())
        grads = sum(p.numel() * 4 for p in self.params)  # one fp32 gradient per trainable param
        opt = sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                  for t in s.values() if torch.is_tensor(t))
        return {"params": params, "grads": grads, "optimizer": opt}

    def _all_params(self) -> list[torch.nn.Parameter]:
        return list(self._model.parameters())

    def close(self) -> None:
        pass


def make_engine(cfg: RunConfig, device: torch.device, precision: Precision) -> Engine:
    """The local engine for one plain process; the distributed one for ranks or DeepSpeed."""
    _, _, world = world_from_env()
    if world > 1 or cfg.deepspeed.enabled:
        from .distributed import AccelerateEngine  # imports accelerate/DeepSpeed only when needed
        return AccelerateEngine(cfg, device, precision)
    return Engine(cfg, device, precision)
