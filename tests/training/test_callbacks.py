"""Callbacks on their own: what they write, keep and refuse, without a model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from training.callbacks import (JsonlLogger, NonFiniteGuard, ProgressBar, TensorBoardLogger,
                                default_callbacks)
from training.layout import RunLayout


def _trainer(tmp_path, step=0, max_steps=6):
    layout = RunLayout.for_run(tmp_path, "run")
    layout.root.mkdir(parents=True)
    return SimpleNamespace(layout=layout, step=step, cfg=SimpleNamespace(train=SimpleNamespace(max_steps=max_steps)))


def _metrics(step, loss=0.5):
    return {"step": step, "loss": loss, "lr": 1e-4, "samples_per_s": 3.0, "grad_norm": float("nan")}


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_jsonl_logger_writes_every_n_steps_and_the_last(tmp_path):
    t = _trainer(tmp_path, max_steps=5)
    cb = JsonlLogger(every=2)
    cb.on_start(t)
    for s in range(1, 6):
        cb.on_step(t, _metrics(s))
    assert _steps(t.layout.metrics) == [2, 4, 5]


def test_jsonl_logger_on_resume_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path, caplog):
    t = _trainer(tmp_path, step=3)
    path = t.layout.metrics
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(_metrics(s)) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    cb = JsonlLogger(every=1)
    cb.on_start(t)  # the run resumes at step 3: steps 4, 5 and the torn 6 will be logged again
    assert _steps(path) == [1, 2, 3]
    assert "torn" in caplog.text or "partial" in caplog.text or "dropped" in caplog.text
    cb.on_step(t, _metrics(4))
    assert _steps(path) == [1, 2, 3, 4]


def test_tensorboard_logger_writes_finite_scalars_only(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    t = _trainer(tmp_path)
    cb = TensorBoardLogger(every=1)
    cb.on_start(t)
    cb.on_step(t, _metrics(1, loss=0.25))
    cb.on_step(t, _metrics(2, loss=0.125))
    cb.on_end(t)
    acc = EventAccumulator(str(t.layout.logs))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "train/grad_norm" not in tags  # NaN grad norm left out
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.25), (2, 0.125)]


def test_non_finite_guard_stops_and_names_the_last_checkpoint(tmp_path):
    t = _trainer(tmp_path)
    NonFiniteGuard().on_step(t, _metrics(1))
    for bad in (float("nan"), math.inf):
        with pytest.raises(FloatingPointError, match="at step 2.*last complete checkpoint: None"):
            NonFiniteGuard().on_step(t, _metrics(2, loss=bad))


def test_progress_bar_counts_from_the_resume_step(tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_PROGRESS_SECONDS", "0")
    t = _trainer(tmp_path, step=2, max_steps=4)
    cb = ProgressBar()
    cb.on_start(t)
    cb.on_step(t, _metrics(3))
    assert cb.bar.n == 3 and cb.bar.total == 4
    cb.on_end(t)


def test_default_callbacks_log_from_rank_zero_only():
    log_cfg = SimpleNamespace(every_steps=1, tensorboard=True, progress=True)
    assert [type(c) for c in default_callbacks(log_cfg, is_main=False)] == [NonFiniteGuard]
    assert [type(c) for c in default_callbacks(log_cfg, is_main=True)] == [
        NonFiniteGuard, JsonlLogger, TensorBoardLogger, ProgressBar]
    quiet = SimpleNamespace(every_steps=1, tensorboard=False, progress=False)
    assert [type(c) for c in default_callbacks(quiet, is_main=True)] == [NonFiniteGuard, JsonlLogger]
