"""Ray Train driver on a real local Ray: workers, crash recovery, resource errors. (A real `ray job
submit` of a driver is in tests/cluster/test_bench.py: the nightly bench submitted to a Ray head.)"""

import json
import time
from pathlib import Path

import pytest

from ..conftest import CONFIGS, load_adapter_tensors, run_ranks

pytestmark = pytest.mark.distributed  # real multi-process clusters: outside the quick tier

TINY = CONFIGS / "train" / "tiny-wan.yaml"


def _cfg(tiny_wan, shards, tmp_path, *overrides):
    from training.config import load_config
    return load_config(TINY, [f"model.path={tiny_wan}", f"data.shards={shards}", f"output_dir={tmp_path}",
                              "log.progress=false", "parallel.backend=ray", *overrides])


ZERO2_RUN = ["deepspeed.config=" + str(CONFIGS / "deepspeed" / "zero2.json"), "train.max_steps=6",
             "checkpoint.every_steps=3", "checkpoint.keep_last=null"]


@pytest.fixture(scope="module")
def reference_adapter(tiny_wan, video_shards, tmp_path_factory):
    """6 uninterrupted steps of 2 ZeRO-2 ranks under torchrun (no Ray): what Ray must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    proc = run_ranks(2, TINY, f"model.path={tiny_wan}", f"data.shards={video_shards}", f"output_dir={out}",
                     "run_name=ref", *ZERO2_RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_adapter_tensors(out / "ref/checkpoints/step-0000006")


def _max_diff(a, b):
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


# A kill during the final save is the harder case (a torn checkpoint, then Ray's restart); a clean
# stop-and-resume between steps is covered through SLURM's requeue (tests/cluster/test_slurm.py) and
# in-process (tests/training/test_stopping.py), which keeps this 40 s Ray run to one crash point.
@pytest.mark.parametrize("point", ["during_save"])
def test_killed_worker_is_restarted_and_finishes_like_an_uninterrupted_run(
        local_ray, reference_adapter, tiny_wan, video_shards, tmp_path, point):
    from cluster.train import run
    crash_step = 4 if point == "after_step" else 6  # during_save: the final save is cut short
    cfg = _cfg(tiny_wan, video_shards, tmp_path, "run_name=crash", "parallel.num_workers=2",
               "parallel.cpus_per_worker=1", "parallel.max_failures=1", f"debug.crash_at_step={crash_step}",
               "debug.crash_rank=1", f"debug.crash_point={point}", *ZERO2_RUN)
    body = run(cfg)
    run_dir = tmp_path / "crash"
    assert (run_dir / f".crash-injected-step-{crash_step}").is_file()  # the kill really happened
    assert body["steps"] == 6 and body["world_size"] == 2
    # The restarted group resumed from step 3 (the last complete checkpoint), not from scratch.
    assert sorted(body["losses"], key=int) == ["4", "5", "6"]
    assert _max_diff(load_adapter_tensors(run_dir / "checkpoints/step-0000006"), reference_adapter) <= 1e-6
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the half-written save was discarded
    steps = [json.loads(line)["step"] for line in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_one_worker_without_deepspeed_trains(local_ray, tiny_wan, video_shards, tmp_path):
    from cluster.train import run
    body = run(_cfg(tiny_wan, video_shards, tmp_path, "run_name=one", "train.max_steps=3",
                    "checkpoint.every_steps=3", "parallel.cpus_per_worker=0.5"))
    assert body["steps"] == 3 and body["world_size"] == 1 and body["engine"].startswith("local")
    assert Path(body["final_checkpoint"]).name == "step-0000003"


@pytest.mark.parametrize("overrides, message", [
    (["parallel.num_workers=3", "parallel.cpus_per_worker=1"], "room for 2"),
    (["parallel.num_workers=1", "parallel.use_gpu=true"], "set parallel.use_gpu=false"),
])
def test_impossible_request_fails_at_once(local_ray, tiny_wan, video_shards, tmp_path, overrides, message):
    from cluster.train import ResourceError, run
    start = time.perf_counter()
    with pytest.raises(ResourceError, match=message):
        run(_cfg(tiny_wan, video_shards, tmp_path, *overrides))
    assert time.perf_counter() - start < 30
    # Nothing was started: the run folder holds only the preflight's shard index (data checked first).
    run_dir = tmp_path / "tiny-wan"
    assert sorted(p.name for p in run_dir.iterdir()) == ["shard_index.json"]


def test_driver_checks_the_config_before_starting_ray(tiny_wan, video_shards, tmp_path):
    """Bad geometry fails in the driver with the workers' own message, before any Ray start."""
    from cluster.train import run
    from training.config import ConfigError
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="data.frames"):
        run(_cfg(tiny_wan, video_shards, tmp_path, "data.frames=8", "parallel.num_workers=2"))
    assert time.perf_counter() - start < 10

