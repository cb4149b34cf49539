"""Learning-rate schedule as a pure function of the step (no scheduler state to checkpoint)."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, schedule: str,
          min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then the decay."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        factor = 1.0 - progress
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}")
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)
