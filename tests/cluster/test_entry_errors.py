"""One error handler for every entry point: a user error is one message and exit code 2.

Each entry point's ``main`` runs in-process with its real argument list (the console script
and ``python -m`` call exactly these); one check runs ``python -m cluster.train`` as a real
subprocess, as a launcher starts it.
"""

import os
import subprocess
import sys
from typing import Callable

import pytest

from training.errors import EXIT_USER_ERROR, LorabenchError, run_entry

from ..conftest import CONFIGS, REPO

BAD = [f"{CONFIGS / 'train/tiny-wan.yaml'}", "lora.rank=true"]


def _mains() -> dict[str, tuple[Callable[[list[str]], int], list[str], str]]:
    import cluster.cli
    import cluster.eval
    import cluster.train
    import training.__main__
    return {
        "lorabench": (cluster.cli.main, ["train", *BAD], "lorabench: error:"),
        "python -m training": (training.__main__.main, BAD, "rank 0: error:"),
        "python -m cluster.train": (cluster.train.main, BAD, "cluster.train: error:"),
        "python -m cluster.eval": (cluster.eval.main, [str(CONFIGS / "eval/tiny-wan.yaml"), "sampling.steps=true"],
                                   "cluster.eval: error:"),
    }


def _run(args, **env):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", **env))


@pytest.mark.parametrize("name", ["lorabench", "python -m training", "python -m cluster.train",
                                  "python -m cluster.eval"])
def test_user_error_is_one_message_and_exit_2(name, capsys, monkeypatch):
    monkeypatch.delenv("LORABENCH_DEBUG", raising=False)
    main, argv, prefix = _mains()[name]
    assert main(list(argv)) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(prefix) and "a boolean is not a number here" in err, err


@pytest.mark.parametrize("name", ["lorabench", "python -m training"])
def test_debug_shows_the_traceback_and_keeps_exit_2(name, capsys, monkeypatch):
    main, argv, prefix = _mains()[name]
    monkeypatch.setenv("LORABENCH_DEBUG", "1")
    assert main(list(argv)) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and prefix in err
    monkeypatch.delenv("LORABENCH_DEBUG")
    assert main([*argv[:1], "--debug", *argv[1:]]) == EXIT_USER_ERROR  # accepted anywhere on the line
    err = capsys.readouterr().err
    assert "Traceback" in err and prefix in err


@pytest.mark.slow
def test_cluster_train_refuses_unusable_data_in_one_line_before_ray_starts(tiny_wan, tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    for i in range(2):
        (data / f"shard-{i:06d}.tar").write_bytes(b"<html>an error page saved as a shard</html>")
    p = _run(["-m", "cluster.train", str(CONFIGS / "train/tiny-wan.yaml"), f"model.path={tiny_wan}",
              f"data.shards={data}", f"output_dir={tmp_path / 'runs'}", "parallel.num_workers=2"],
             OMP_NUM_THREADS="1")
    assert p.returncode == EXIT_USER_ERROR, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("cluster.train: error: none of the 2 shard(s) in data.shards can be used "
                                "(shard_unreadable=2)"), p.stderr
    assert sum("leaving out shard" in line for line in lines) == 2  # each one named once, with its reason
    assert "Traceback" not in p.stderr and "Ray cluster" not in p.stdout  # Ray never started


def test_unexpected_exceptions_keep_their_traceback(capsys):
    def bug() -> int:
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        run_entry("x", bug)

    def user() -> int:
        raise LorabenchError("data.shards: nothing there")
    assert run_entry("x", user) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "x: error: data.shards: nothing there\n"


def test_a_user_error_wrapped_by_ray_is_shown_as_the_original():
    from training.errors import user_error
    from training.data.pipeline import DataError
    import ray.exceptions
    original = DataError("shard-0.tar: truncated")
    try:
        raise ray.exceptions.RayTaskError("f", "Traceback (most recent call last):\n  ...", original)
    except ray.exceptions.RayTaskError as wrapped:
        try:
            raise RuntimeError("Training failed") from wrapped
        except RuntimeError as outer:
            assert user_error(outer) is original


def test_a_user_error_in_ray_train_workers_is_rank_0s_original():
    from ray.train import WorkerGroupError

    from training.data.pipeline import DataError
    from training.errors import user_error
    first, second = DataError("rank 0: shard-0.tar truncated"), DataError("rank 1: shard-1.tar truncated")
    wrapped = WorkerGroupError("Traceback (most recent call last): ...", {1: second, 0: first})
    assert user_error(wrapped) is first
    assert user_error(WorkerGroupError("x", {0: ZeroDivisionError("a bug")})) is None  # a bug stays a bug
