"""Small hooks around the training loop: metrics files, TensorBoard, progress bar.

Each callback gets ``on_start(trainer)``, ``on_step(trainer, metrics)`` and ``on_end(trainer)``;
the loop itself knows nothing about logging formats.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from .console import progress
from .fsio import append_jsonl, read_jsonl, write_jsonl

log = logging.getLogger("lorabench.train")


class Callback:
    def on_start(self, trainer: Any) -> None: ...
    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_end(self, trainer: Any) -> None: ...


class JsonlLogger(Callback):
    """Appends one JSON object per logged step to logs/metrics.jsonl.

    Resume-safe: on start it keeps only the records up to the resume step (so the file never
    holds two lines for one step) and drops a torn last line left by a run killed while
    writing it, saying once in the log what was dropped; a line damaged anywhere else is an
    error naming file:line (see training.fsio).
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def on_start(self, trainer: Any) -> None:
        path = trainer.layout.metrics
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            contents = read_jsonl(path)
            if contents.torn is not None:
                log.warning("%s", contents.describe_torn())
            kept = [r for r in contents.records
                    if not isinstance(r, dict) or not isinstance(r.get("step"), (int, float))
                    or r["step"] <= trainer.step]
            if contents.torn is not None or len(kept) != len(contents.records):
                write_jsonl(path, kept)  # atomic: a kill here keeps the old file, never half of it

    def on_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        if metrics["step"] % self.every == 0 or metrics["step"] == trainer.cfg.train.max_steps:
            repaired = append_jsonl(trainer.layout.metrics, metrics)
            if repaired is not None:
                log.warning("%s", repaired.describe_torn())


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
        self.bar: Any = None

    def on_start(self, trainer: Any) -> None:
        # A bar on a terminal; one line per interval under Ray or into a log file.
        self.bar = progress(total=trainer.cfg.train.max_steps, initial=trainer.step, desc="train", unit="step")

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


def default_callbacks(log_cfg: Any, is_main: bool) -> list[Callback]:
    """The non-finite guard on every rank; logs, events and the progress bar from rank 0 only."""
    if not is_main:
        return [NonFiniteGuard()]
    cbs: list[Callback] = [NonFiniteGuard(), JsonlLogger(log_cfg.every_steps)]
    if log_cfg.tensorboard:
        cbs.append(TensorBoardLogger(log_cfg.every_steps))
    if log_cfg.progress:
        cbs.append(ProgressBar())
    return cbs
