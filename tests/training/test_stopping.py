"""Stopping on request (what SLURM's pre-timeout signal triggers): a checkpoint at the next step
boundary, a distinct exit code, and a resume that ends with the uninterrupted run's adapter."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from training.callbacks import Callback
from training.stopping import EXIT_STOPPED
from training.summary import exit_code
from training.trainer import Trainer

from ..conftest import load_adapter_tensors, tiny_config

pytestmark = pytest.mark.slow  # three tiny training runs end to end

COMMON = ("train.max_steps=5", "checkpoint.every_steps=100", "log.tensorboard=false")


class RequestStopAt(Callback):
    """Asks for a stop the way the SLURM wrapper does: by the STOP file, after step ``at``."""

    def __init__(self, at: int, how: str = "file") -> None:
        self.at, self.how = at, how

    def on_step(self, trainer, metrics):
        if metrics["step"] == self.at:
            if self.how == "file":
                trainer.layout.stop_request.touch()
            else:
                os.kill(os.getpid(), signal.SIGUSR1)


def test_a_stop_request_checkpoints_at_the_step_boundary_and_resume_matches(tiny_wan, video_shards, tmp_path):
    whole = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=whole", *COMMON)).run()
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=cut", *COMMON)
    stopped = Trainer(cfg, callbacks=[RequestStopAt(2)]).run()
    assert stopped.steps == 2 and stopped.stopped.startswith("stop requested")
    assert [p.name for p in stopped.checkpoints] == ["step-0000002"]  # saved although every_steps=100
    assert not stopped.run_dir.joinpath("STOP").exists()  # honoured: the resumed run must not stop again
    assert exit_code(stopped.run_dir) == EXIT_STOPPED == 75
    resumed = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=cut", "train.resume=auto",
                                  *COMMON)).run()
    assert resumed.stopped is None and exit_code(resumed.run_dir) == 0
    assert [resumed.losses[s] for s in (3, 4, 5)] == [whole.losses[s] for s in (3, 4, 5)]
    a, b = load_adapter_tensors(whole.final_checkpoint), load_adapter_tensors(resumed.final_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigusr1_to_the_training_process_stops_it_the_same_way(tiny_wan, video_shards, tmp_path):
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        result = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, *COMMON),
                         callbacks=[RequestStopAt(3, how="signal")]).run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (result.steps, result.stopped) == (3, "SIGUSR1")
    assert [p.name for p in result.checkpoints] == ["step-0000003"]
