"""Helpers shared by the training tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from training.checkpoint import (CheckpointSpaceError, begin_checkpoint, publish_checkpoint,
                                 remove_temp_checkpoints, space_errors, space_shortfall)
from training.layout import RunLayout


def save_checkpoint(layout: RunLayout, step: int, *, write_files: Callable[[Path], Any],
                    manifest: dict[str, Any], keep_last: Optional[int]) -> Path:
    """One writer's checkpoint through the same steps as ``CheckpointManager.save`` takes on one
    rank (temp cleanup, space check, temp folder, publish), with ``write_files(tmp)`` writing the
    content: the on-disk format without a model."""
    remove_temp_checkpoints(layout)
    refusal = space_shortfall(layout, step)
    if refusal is not None:
        raise CheckpointSpaceError(refusal)
    token = uuid.uuid4().hex[:8]
    with space_errors(layout, step, layout.temp_checkpoint(step, token)):
        tmp = begin_checkpoint(layout, step, token)
        write_files(tmp)
        return publish_checkpoint(layout, step, tmp, manifest, keep_last)
