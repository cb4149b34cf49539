"""The single-process engine: no wrappers, what ``lorabench train`` runs by default."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ContextManager

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import CheckpointError, flatten_optimizer, unflatten_optimizer
from .base import Engine, NamedParams

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


class LocalEngine(Engine):
    kind = "local"

    def model_loading(self) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module, params: list[torch.nn.Parameter],
                optimizer: torch.optim.Optimizer) -> torch.nn.Module:
        self.optimizer, self.params, self._model = optimizer, params, model
        # fp16 needs loss scaling (small gradients underflow); a disabled scaler is a passthrough.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.name == "fp16")
        return model

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        self.scaler.scale(loss / self.settings.grad_accum).backward()

    def step(self) -> float:
        self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        max_norm = self.settings.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
        self.scaler.step(self.optimizer)  # skips the step on inf/nan gradients under fp16
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def adapter_state(self, named: NamedParams) -> dict[str, torch.Tensor]:
        return {k: p.detach().to("cpu", torch.float32).clone().contiguous() for k, p in named()}

    # ---------------------------------------------------------------- optimizer state
    # Written into the checkpoint's temporary folder, which is published with one rename:
    # plain writes are enough here.

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

    def memory_report(self) -> dict[str, int]:
        params = sum(p.numel() * p.element_size() for p in self._model.parameters())
        grads = sum(p.numel() * 4 for p in self.params)  # one fp32 gradient per trainable param
        opt = sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                  for t in s.values() if torch.is_tensor(t))
        return {"params": params, "grads": grads, "optimizer": opt}

    # ---------------------------------------------------------------- collectives (one rank)

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def mean(self, value: float) -> float:
        return value
