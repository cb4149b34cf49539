"""The console: plain progress lines off a terminal, and the known library noise muted."""

import os
import subprocess
import sys

import pytest

from training.console import LineProgress, progress

from ..conftest import REPO


def test_progress_off_a_terminal_is_plain_lines_without_carriage_returns(capsys):
    bar = progress(total=4, desc="train", unit="step")  # pytest's stderr is not a terminal
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0
    for loss in (1.5, 1.4, 1.3, 1.2):
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    # One line per update before the end, then exactly one final line (not repeated by close()).
    assert len(lines) == 4, lines
    assert lines[0].startswith("train: 1/4 (25%), ") and "eta" in lines[0] and lines[0].endswith("[loss=1.5000]")
    assert lines[-1].startswith("train: 4/4 (100%), ") and "eta" not in lines[-1]


def test_line_progress_respects_its_interval(capsys):
    bar = LineProgress(range(1000), desc="count", unit="x", interval=3600)
    assert sum(1 for _ in bar) == 1000
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("count: 1000/1000 (100%)")


def test_resumed_progress_counts_from_its_initial_step(capsys):
    bar = LineProgress(total=10, desc="train", initial=6, interval=3600)
    bar.update(4)
    bar.close()
    assert capsys.readouterr().err.startswith("train: 10/10 (100%), ")


def test_disabled_progress_prints_nothing(capsys):
    assert list(progress(range(3), disable=True)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


_NOISY = """
import os, sys
sys.path.insert(0, {repo!r})
if {quiet}:
    from training.console import quiet_third_party
    quiet_third_party()
import transformers
transformers.CLIPImageProcessor   # the torchvision fallback notice
import deepspeed                  # the accelerator notice
from transformers.utils import logging
logging.get_logger("transformers.x").warning("a warning about the user's input")
"""


def _output(quiet: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    p = subprocess.run([sys.executable, "-c", _NOISY.format(repo=str(REPO), quiet=quiet)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout + p.stderr  # DeepSpeed's logger writes to stdout


@pytest.mark.slow  # two fresh interpreters importing transformers and DeepSpeed
def test_library_notices_are_muted_and_other_warnings_are_not():
    loud, quiet = _output(False), _output(True)
    for notice in ("requires torchvision (not installed)", "Setting accelerator to CPU"):
        assert notice in loud  # the noise exists without the filter, so this test can fail
        assert notice not in quiet
    assert "a warning about the user's input" in quiet


def test_muted_prints_drop_only_the_known_noise(capsys):
    from training.console import muted_prints
    with muted_prints():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("a line the user needs")
    print("after built successfully")  # outside the block nothing is filtered
    assert capsys.readouterr().out == "a line the user needs\nafter built successfully\n"


def test_a_bad_progress_interval_is_named_before_anything_loads(monkeypatch, capsys):
    from cluster.cli import EXIT_USER_ERROR, main
    from training.console import progress_seconds
    monkeypatch.setenv("LORABENCH_PROGRESS_SECONDS", "30")
    assert progress_seconds() == 30.0
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("LORABENCH_PROGRESS_SECONDS", bad)
        # Any command checks it at start: here the config error it would hit later never comes.
        assert main(["train", "no-such-config.yaml"]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert f"LORABENCH_PROGRESS_SECONDS={bad!r} is not a number of seconds >= 0" in err, err
