"""Fault injection for tests and drills (``debug.crash_at_step``): lose a process as a node would."""

from __future__ import annotations

import logging
import os
import signal

from .config import DebugConfig
from .layout import RunLayout

log = logging.getLogger("lorabench.train")


def maybe_crash(debug: DebugConfig, layout: RunLayout, step: int, rank: int, point: str) -> None:
    """SIGKILL this process once at ``point`` of ``step`` on ``debug.crash_rank``.

    A marker file in the run folder makes it happen once: the restarted run goes on.
    """
    if debug.crash_at_step != step or debug.crash_point != point or debug.crash_rank != rank:
        return
    marker = layout.root / f".crash-injected-step-{step}"
    if marker.exists():
        return
    marker.write_text(f"rank {rank} killed at step {step} ({point})\n")
    log.warning("debug.crash_at_step=%d: killing rank %d (pid %d) %s", step, rank, os.getpid(),
                point.replace("_", " "))
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)
