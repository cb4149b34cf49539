"""The lines a user reads when a run ends: what ran, and what was written where.

Shared by every way a run is started (``lorabench train``, ``python -m training``,
``python -m cluster.train``), all of which end with a ``result.json`` in the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .layout import RunLayout
from .stopping import EXIT_STOPPED


@dataclass
class TrainResult:
    """What ``Trainer.run`` returns (result.json holds the same and more)."""

    run_dir: Path
    steps: int
    losses: dict[int, float] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0
    stopped: Optional[str] = None  # why the run stopped before max_steps (training.stopping)

    @property
    def final_checkpoint(self) -> Optional[Path]:
        return self.checkpoints[-1] if self.checkpoints else None


def write_result(layout: RunLayout, result: TrainResult, **fields: Any) -> None:
    """result.json in the run folder: what a driver (Ray, SLURM) reports when the job ends."""
    from .fsio import atomic_write_json
    final = result.final_checkpoint or layout.latest_checkpoint()
    atomic_write_json(layout.result, {
        "steps": result.steps, "seconds": round(result.seconds, 3), "skipped": result.skipped,
        "stopped": result.stopped, "final_checkpoint": str(final) if final else None, **fields,
        "losses": {str(k): v for k, v in result.losses.items()}})


def run_summary(run_dir: Path) -> str:
    """Summary of the finished run in ``run_dir`` (from its result.json)."""
    layout = RunLayout(Path(run_dir))
    body: dict[str, Any] = json.loads(layout.result.read_text())
    losses = body.get("losses", {})
    trend = ""
    if losses:
        steps = sorted(losses, key=int)
        trend = f"  loss {losses[steps[0]]:.4f} -> {losses[steps[-1]]:.4f}"
    final = body.get("final_checkpoint")
    lines = [
        f"run dir:          {layout.root}",
        f"steps:            {body['steps']}{trend}  ({body['engine']}; {body['seconds']:.1f}s)",
        f"final checkpoint: {final}" + ("  (PEFT adapter_model.safetensors + diffusers "
                                        "pytorch_lora_weights.safetensors)" if final else ""),
        f"metrics:          {layout.metrics_log}  (tensorboard --logdir {layout.logs})",
        f"result:           {layout.result}",
        f"data:             {body['skipped']}",
    ]
    if body.get("stopped"):
        lines.append(f"stopped early:    {body['stopped']}; continue with train.resume=auto "
                     f"(exit code {EXIT_STOPPED})")
    return "\n".join(lines)


def exit_code(run_dir: Path) -> int:
    """0 for a finished run, EXIT_STOPPED for one stopped on request (its job should be requeued)."""
    body = json.loads(RunLayout(Path(run_dir)).result.read_text())
    return EXIT_STOPPED if body.get("stopped") else 0
