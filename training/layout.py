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

A checkpoint is complete when its manifest exists and parses; anything else under
checkpoints/ (a ``.tmp-*`` folder, a step folder without a manifest or with a damaged one)
is never resumed from, evaluated or counted by ``checkpoint.keep_last``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

STEP_DIR = re.compile(r"^step-(\d{7})$")
log = logging.getLogger("lorabench.checkpoint")
_reported: set[tuple[str, str]] = set()  # (folder, problem) already logged by this process


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
    def metrics_log(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def stop_request(self) -> Path:
        """STOP: a run that finds it after a step saves a checkpoint and exits (training.stopping)."""
        return self.root / "STOP"

    @property
    def result(self) -> Path:
        """result.json: written last by a finished run (steps, losses, engine, data counts)."""
        return self.root / RESULT_FILE

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
        """(step, path) of finished checkpoints, oldest first; temp dirs are never listed.

        A step folder whose manifest is missing or does not parse is skipped, with one log
        line per folder (see :meth:`damaged_checkpoints`).
        """
        found = []
        for step, p, problem in self._step_folders():
            if problem is None:
                found.append((step, p))
            elif (str(p), problem) not in _reported:  # once per folder and problem, not per call
                _reported.add((str(p), problem))
                log.warning("skipping checkpoint %s: its %s %s; it is not resumed from, and saving "
                            "that step again replaces it", p, MANIFEST, problem)
        return found

    def damaged_checkpoints(self) -> list[tuple[int, Path, str]]:
        """(step, path, problem) of step folders whose manifest exists but does not parse."""
        return [(step, p, problem) for step, p, problem in self._step_folders()
                if problem is not None and (p / MANIFEST).exists()]

    def _step_folders(self) -> list[tuple[int, Path, Optional[str]]]:
        if not self.checkpoints.is_dir():
            return []
        out = []
        for p in self.checkpoints.iterdir():
            m = STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p, manifest_problem(p)))
        return sorted(out)

    def latest_checkpoint(self) -> Optional[Path]:
        done = self.complete_checkpoints()
        return done[-1][1] if done else None


def manifest_problem(folder: Path) -> Optional[str]:
    """Why ``folder``'s manifest makes it no usable checkpoint, or None when it parses.

    A manifest is written last and published with the folder by one rename, so a missing one
    means a save that did not finish, and one that does not parse means damage after the fact
    (a partial copy, a disk error); both are skipped the same way.
    """
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_bytes())
    except FileNotFoundError:
        return "is missing (a save that did not finish)"
    except IsADirectoryError:
        return "is not a file"
    except (UnicodeDecodeError, ValueError) as e:
        return f"is not valid JSON ({e})"
    if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
        return "has no 'files' table of sha256s"
    return None


RESULT_FILE = "result.json"
SHARD_INDEX = "shard_index.json"  # per-shard sample counts and bad shards (data.index)

# File names inside a checkpoint folder.
MANIFEST = "manifest.json"
CKPT_CONFIG = "config.yaml"
TRAIN_STATE = "train_state"
