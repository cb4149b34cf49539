"""SLURM wrappers: the rendered script (any allocation, checked by bash itself), the request
checks, and, on a real one-node SLURM, a 2-worker Ray training through sbatch, a pre-timeout
signal turned into checkpoint + requeue + exact resume, and an impossible request refused."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cluster.slurm.ports import BLOCK, RayPorts
from cluster.slurm.render import SlurmError, SlurmRequest, render
from cluster.slurm.wait import missing_nodes
from training.config import ConfigError, load_config

from ..conftest import CONFIGS, load_adapter_tensors
from .slurm_cluster import OneNodeSlurm, unavailable

TINY = CONFIGS / "train" / "tiny-wan.yaml"


def _cfg(tmp_path, *overrides):
    return load_config(TINY, [f"output_dir={tmp_path}", "parallel.backend=ray", *overrides])


# ----------------------------------------------------------------------------- without SLURM


def test_multi_node_ray_script(tmp_path):
    overrides = ["parallel.num_workers=16", "parallel.use_gpu=true"]
    req = SlurmRequest(nodes=4, gpus_per_node=4, time="1-00:00:00", partition="gpu", account="proj",
                       signal_margin=600, sbatch=["--qos=high"])
    text = render(TINY, overrides, _cfg(tmp_path, *overrides), req)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=5", "#SBATCH --time=1-00:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj", "#SBATCH --qos=high", "#SBATCH --signal=B:USR1@600", "#SBATCH --requeue",
                 f"#SBATCH --output={tmp_path}/tiny-wan/slurm/slurm-%j.out"):
        assert line in text.splitlines(), line
    # One srun step over the 4 nodes starts Ray (head by SLURM_NODEID inside cluster.slurm.node).
    assert re.search(r"srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --overlap .*\n.*\n.* -m cluster\.slurm\.node "
                     r"--head-ip \"\$HEAD_IP\" --cpus 5 --gpus 4 &", text)
    assert '-m cluster.slurm.wait --address "$RAY_ADDRESS" --hosts "$HOSTS" --cpus-per-node 5' in text
    assert "--gpus-per-node 4 --timeout 300 || exit 1" in text
    driver = next(line for line in text.splitlines() if " -m cluster.train " in line)
    assert driver.endswith("parallel.num_workers=16 parallel.use_gpu=true train.resume=auto parallel.backend=ray &")
    assert "trap on_usr1 USR1" in text and 'touch "$RUN_DIR/STOP"' in text and "scontrol requeue" in text
    assert not re.search(r"\bsleep\b", text)  # joins are waited for, never guessed
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # the script parses


def test_torchrun_script(tmp_path):
    overrides = ["train.device=cuda"]
    cfg = load_config(TINY, [f"output_dir={tmp_path}", *overrides])
    text = render(TINY, overrides, cfg, SlurmRequest(nodes=2, gpus_per_node=4, launcher="torchrun"))
    assert "--nnodes=2 --nproc-per-node=4" in text and '--rdzv-endpoint="$HEAD_IP:$PORT"' in text
    assert "-m training" in text and "parallel.backend=none" in text and "cluster.train" not in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    with pytest.raises(ConfigError, match="--launcher torchrun starts the ranks itself"):
        render(TINY, [], _cfg(tmp_path, "parallel.num_workers=8"), SlurmRequest(nodes=2, gpus_per_node=4,
                                                                                 launcher="torchrun"))


def test_ports_are_per_job_and_below_the_ephemeral_range():
    a, b = RayPorts.for_job(1234), RayPorts.for_job(1235)
    assert b.gcs - a.gcs == BLOCK and a.max_worker < b.gcs
    assert max(RayPorts.for_job(j).max_worker for j in range(2000)) < 32768
    assert len({RayPorts.for_job(j).gcs for j in range(450)}) == 450


@pytest.mark.parametrize("req, overrides, message", [
    (SlurmRequest(nodes=2, gpus_per_node=4), ["parallel.num_workers=4", "parallel.use_gpu=true"],
     "--nodes 2 x --gpus-per-node 4 = 8 GPUs, but the run config has parallel.num_workers=4"),
    (SlurmRequest(nodes=1), ["parallel.use_gpu=true"], "needs --gpus-per-node"),
    (SlurmRequest(nodes=2), ["parallel.num_workers=3"], "does not split evenly"),
    (SlurmRequest(cpus_per_node=1), ["parallel.num_workers=2", "parallel.cpus_per_worker=1"], "--cpus-per-node 1"),
    (SlurmRequest(time="four hours"), [], "--time four hours"),
])
def test_requests_that_do_not_match_the_run_are_refused(tmp_path, req, overrides, message):
    with pytest.raises(ConfigError) as info:
        render(TINY, overrides, _cfg(tmp_path, *overrides), req)
    assert message in str(info.value)


def test_wait_names_the_nodes_that_did_not_join():
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "NodeManagerHostname": "gpu001",
              "Resources": {"CPU": 9.0, "GPU": 8.0}},
             {"Alive": True, "NodeManagerAddress": "10.0.0.2", "NodeManagerHostname": "gpu002",
              "Resources": {"CPU": 9.0, "GPU": 4.0}},
             {"Alive": False, "NodeManagerAddress": "10.0.0.3", "NodeManagerHostname": "gpu003", "Resources": {}}]
    assert missing_nodes(nodes, ["gpu001", "gpu002", "gpu003"], 9, 8) == [
        "gpu002 (joined with 9 CPU, 4 GPU; expected 9 CPU, 8 GPU)", "gpu003 (not joined)"]
    assert missing_nodes(nodes, ["gpu001"], 9, 8) == []


# ----------------------------------------------------------------------------- on a real SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = unavailable()
    if why:
        pytest.skip(why)
    cluster = OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()
    left = subprocess.run(["pgrep", "-f", "lorabench-ray-|slurmd|slurmctld"], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes left behind: {left}"


def _submit(slurm, tiny_wan, video_shards, out: Path, *extra: str) -> int:
    """``lorabench slurm submit`` of the tiny 2-worker Ray config; returns the job id."""
    import contextlib
    import io
    import os

    from cluster.slurm.cli import main
    argv = ["submit", str(TINY), "--cpus-per-node", "2", "--signal-margin", "60", f"model.path={tiny_wan}",
            f"data.shards={video_shards}", f"output_dir={out}", "parallel.num_workers=2", "parallel.cpus_per_worker=1",
            "train.max_steps=24", "checkpoint.every_steps=12", "checkpoint.keep_last=null", "log.tensorboard=false",
            "log.every_steps=1",
            "deepspeed.zero_stage=0", *extra]
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = slurm.env["SLURM_CONF"]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert main(argv) == 0
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = saved
    return int(re.search(r"submitted job (\d+)", printed.getvalue()).group(1))


def _log(out: Path, job: int) -> str:
    path = out / "tiny-wan" / "slurm" / f"slurm-{job}.out"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def uninterrupted(slurm, tiny_wan, video_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm-run")
    job = _submit(slurm, tiny_wan, video_shards, out)
    info = slurm.wait_for(job, timeout=600)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), _log(out, job)
    return out, job


@pytest.mark.slurm
def test_a_two_worker_ray_training_runs_through_sbatch(slurm, uninterrupted):
    out, job = uninterrupted
    run = out / "tiny-wan"
    log = _log(out, job)
    assert "all 1 node(s) joined the Ray cluster" in log
    assert (run / "slurm" / "job.sbatch").is_file()  # what ran is kept
    result = (run / "result.json").read_text()
    assert '"steps": 24' in result and '"world_size": 2' in result
    assert load_adapter_tensors(run / "checkpoints" / "step-0000024")
    assert list((run / "slurm" / "ray-logs").iterdir())  # Ray's node-local logs copied to the run folder
    # The driver's console through Ray's relay, as a user reads it in the job log: progress as
    # plain lines, the run summary, none of the library notices.
    assert "\r" not in log and "train: 24/24 (100%)" in log
    for noise in ("requires torchvision", "Setting accelerator to CPU", "Loading pipeline components",
                  "built successfully", "all_gather_into_tensor"):
        assert noise not in log, noise
    for line in ("run dir:", "final checkpoint:", "metrics:", "result:", "wall time:"):
        assert line in log, line


@pytest.mark.slurm
def test_the_pre_timeout_signal_checkpoints_requeues_and_resumes_exactly(slurm, uninterrupted, tiny_wan, video_shards,
                                                                         tmp_path):
    job = _submit(slurm, tiny_wan, video_shards, tmp_path)
    metrics = tmp_path / "tiny-wan" / "logs" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, _log(tmp_path, job)
        time.sleep(0.5)
    slurm.run("scancel", "--signal=USR1", "--batch", str(job))  # what --signal=B:USR1@margin sends
    # SLURM holds a requeued job for a while before it is eligible again; let it start now.
    deadline = time.monotonic() + 300
    while "requeueing job" not in _log(tmp_path, job):
        assert time.monotonic() < deadline, _log(tmp_path, job)
        time.sleep(1)
    while slurm.job(job).get("JobState") not in ("PENDING", "RUNNING", "COMPLETED"):
        time.sleep(1)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
    info = slurm.wait_for(job, timeout=600)
    log = _log(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert int(info["Restarts"]) == 1 and "(start 2)" in log
    stopped = int(re.search(r"stopped after step (\d+) \(stop requested", log).group(1))
    assert 3 <= stopped < 24 and f"resumed from {tmp_path}/tiny-wan/checkpoints/step-{stopped:07d}" in log
    assert (tmp_path / "tiny-wan" / "checkpoints" / f"step-{stopped:07d}").is_dir()
    ref = load_adapter_tensors(uninterrupted[0] / "tiny-wan" / "checkpoints" / "step-0000024")
    got = load_adapter_tensors(tmp_path / "tiny-wan" / "checkpoints" / "step-0000024")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slurm
def test_more_gpus_than_the_node_has_is_refused_before_submission(slurm, tiny_wan, video_shards, tmp_path, monkeypatch):
    from cluster.slurm.cli import main
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    before = slurm.run("squeue", "-h", "-o", "%i").stdout
    with pytest.raises(SlurmError, match="has 0 node.s. with 1 GPU"):
        main(["submit", str(TINY), "--gpus-per-node", "1", f"model.path={tiny_wan}", f"data.shards={video_shards}",
              f"output_dir={tmp_path}", "parallel.num_workers=1", "parallel.use_gpu=true"])
    assert slurm.run("squeue", "-h", "-o", "%i").stdout == before
    assert not (tmp_path / "tiny-wan" / "slurm" / "job.sbatch").exists()
