"""Stopping a run early, at a step boundary, with a checkpoint.

What a scheduler's pre-timeout signal asks for (the SLURM wrapper's ``--signal=B:USR1@margin``
trap writes the request file), and what a user can ask for by hand (``touch RUN_DIR/STOP``).
Rank 0 reads the request and every rank hears it from rank 0 (a broadcast), so all ranks stop
after the same step and the checkpoint collective cannot hang. A run that stopped exits with
:data:`EXIT_STOPPED`; ``train.resume=auto`` continues it exactly.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

from .layout import RunLayout

log = logging.getLogger("lorabench.train")

#: Exit code of a run stopped on request (EX_TEMPFAIL, "try again later"): the SLURM wrapper
#: requeues the job on it.
EXIT_STOPPED = 75


class StopRequests:
    def __init__(self, layout: RunLayout, engine: Any) -> None:
        self.path = layout.stop_request
        self.engine = engine
        self.signalled = False
        # A signal sent to the training process itself (kill -USR1, srun --signal=USR1@T) also
        # counts; handlers can only be set from the main thread (not in a Ray worker's thread).
        if engine.is_main and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def requested(self) -> Optional[str]:
        """Why the run should stop after this step, or None; every rank calls it (a collective)."""
        reason = None
        if self.engine.is_main:
            if self.signalled:
                reason = "SIGUSR1"
            elif self.path.exists():
                reason = f"stop requested ({self.path})"
        return self.engine.broadcast_object(reason) if self.engine.world_size > 1 else reason

    def honoured(self, reason: str, step: int) -> str:
        """The checkpoint of ``step`` is saved: clear the request (a resumed run must not stop
        again at once) and return ``reason``."""
        if self.engine.is_main:
            log.warning("stopped after step %d (%s): checkpoint saved; resume with train.resume=auto", step, reason)
            self.path.unlink(missing_ok=True)
        self.signalled = False
        return reason
