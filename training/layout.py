"""The run-directory layout. Every path of a run is derived here and nowhere else.

    runs/<run_name>/
      config.yaml                      resolved config, exactly what ran
      logs/metrics.jsonl               one JSON object per logged step
      logs/events.out.tfevents.*       TensorBoard
      checkpoints/step-0000500/
        adapter_model.safetensors      PEFT layout  (PeftModel.from_pretrained)
        adapter_config.json
        pytorch_lora_weights.safetensors  diffusers layout (pipe.load_lora_weights)
        config.yaml                    the config this checkpoint was trained with
        train_state/                   optimizer, RNG and data position for exact resume
        manifest.json                  written last: step, base model, LoRA settings, sha256s
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

STEP_DIR = re.compile(r"^step-(\d{7})$")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def for_run(cls, output_dir: str | Path, run_name: str) -> "RunLayout":
        return cls(Path(output_dir) / run_name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}"

    def temp_checkpoint(self, step: int, token: str) -> Path:
        # Same parent as the final dir so the publishing rename is atomic (one filesystem).
        return self.checkpoints / f".tmp-step-{step:07d}-{token}"

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of finished checkpoints, oldest first; temp dirs are never listed."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = STEP_DIR.match(p.name)
            if m and (p / MANIFEST).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> Optional[Path]:
        done = self.complete_checkpoints()
        return done[-1][1] if done else None


# File names inside a checkpoint folder.
MANIFEST = "manifest.json"
CKPT_CONFIG = "config.yaml"
TRAIN_STATE = "train_state"
