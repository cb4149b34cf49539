"""Engines: one interface (:mod:`.base`), a single-process engine (:mod:`.local`) and an
accelerate + DeepSpeed engine (:mod:`.zero`, the only module of ``training/`` that imports
DeepSpeed, imported only when a run needs it)."""

from __future__ import annotations

import torch

from ..runtime import Precision
from .base import Engine, EngineSettings, world_from_env
from .local import LocalEngine


def make_engine(settings: EngineSettings, device: torch.device, precision: Precision) -> Engine:
    """The local engine for one plain process; the DeepSpeed one for ranks or DeepSpeed."""
    _, _, world = world_from_env()
    if world > 1 or settings.deepspeed_enabled:
        from .zero import AccelerateEngine  # imports accelerate/DeepSpeed only when needed
        return AccelerateEngine(settings, device, precision)
    return LocalEngine(settings, device, precision)


__all__ = ["Engine", "EngineSettings", "LocalEngine", "make_engine", "world_from_env"]
