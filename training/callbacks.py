"""Small hooks around the training loop: metrics files, TensorBoard, progress bar.

Each callback gets ``on_start(trainer)``, ``on_step(trainer, metrics)`` and ``on_end(trainer)``;
the loop itself knows nothing about logging formats.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from tqdm.auto import tqdm


class Callback:
    def on_start(self, trainer: Any) -> None: ...
    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_end(self, trainer: Any) -> None: ...


class JsonlLogger(Callback):
    """Appends one JSON object per logged step to logs/metrics.jsonl (resume-safe: it truncates
    records past the resume step so the file never holds two lines for one step)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_start(self, trainer: Any) -> None:
        path = trainer.layout.metrics
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= trainer.step]
            path.write_text("".join(line + "\n" for line in kept))

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        if metrics["step"] % self.every == 0 or metrics["step"] == trainer.cfg.train.max_steps:
            with open(trainer.layout.metrics, "a") as f:
                f.write(json.dumps(metrics, sort_keys=True) + "\n")


class TensorBoardLogger(Callback):
    def __init__(self, every: int) -> None:
        self.every = every
        self.writer: Optional[Any] = None

    def on_start(self, trainer: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(trainer.layout.logs), purge_step=trainer.step + 1)

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.writer is None or metrics["step"] % self.every:
            return
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"train/{k}", v, metrics["step"])

    def on_end(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    def __init__(self) -> None:
        self.bar: Optional[tqdm] = None

    def on_start(self, trainer: Any) -> None:
        self.bar = tqdm(total=trainer.cfg.train.max_steps, initial=trainer.step, desc="train",
                        unit="step", dynamic_ncols=True)

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        assert self.bar is not None
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", sps=f"{metrics['samples_per_s']:.1f}",
                             lr=f"{metrics['lr']:.2e}")

    def on_end(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class NonFiniteGuard(Callback):
    """Stop at the first NaN/inf loss: a diverged run must not keep writing checkpoints."""

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"loss is {metrics['loss']} at step {metrics['step']}; lower optim.lr or use fp32/bf16 "
                f"(last complete checkpoint: {trainer.layout.latest_checkpoint()})")
