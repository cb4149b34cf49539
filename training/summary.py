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


@dataclass
class TrainResult:
    """What ``Trainer.run`` returns (result.json holds the same and more)."""

    run_dir: Path
    steps: int
    losses: dict[int, float] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0

    @property
    def final_checkpoint(self) -> Optional[Path]:
        return self.checkpoints[-1] if self.checkpoints else None


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
    return "\n".join(lines)
