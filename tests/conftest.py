"""Session fixtures: tiny random models and synthetic shards, built once and loaded back through
the same from_pretrained / tar paths that real checkpoints and data use."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Before torch is imported anywhere: never reach a hub, and one intra-op thread. On 2 cores,
# 2 OpenMP threads next to any other busy process make small matmuls ~100x slower.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    from training.models import get_spec
    return get_spec("wan").make_tiny(tmp_path_factory.mktemp("models") / "wan", seed=0)


@pytest.fixture(scope="session")
def tiny_wan_ti2v(tmp_path_factory) -> Path:
    from training.models import get_spec
    return get_spec("wan").make_tiny(tmp_path_factory.mktemp("models") / "wan-ti2v", seed=0, variant="ti2v")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    from training.models import get_spec
    return get_spec("sd3").make_tiny(tmp_path_factory.mktemp("models") / "sd3", seed=0)


@pytest.fixture(scope="session")
def video_shards(tmp_path_factory) -> Path:
    from training.data.synthetic import make_data
    out = tmp_path_factory.mktemp("data") / "video"
    make_data("video", out, shards=3, samples_per_shard=16, seed=0, size=(32, 32), frames=9)
    return out


@pytest.fixture(scope="session")
def image_shards(tmp_path_factory) -> Path:
    from training.data.synthetic import make_data
    out = tmp_path_factory.mktemp("data") / "image"
    make_data("image", out, shards=2, samples_per_shard=16, seed=0, size=(32, 32))
    return out


def tiny_config(family: str, model: Path, shards, tmp_path: Path, *overrides: str):
    """A shipped tiny config pointed at fixture paths, with quiet logging."""
    from training.config import load_config
    return load_config(CONFIGS / "train" / f"tiny-{family}.yaml",
                       [f"model.path={model}", f"data.shards={shards}", f"output_dir={tmp_path / 'runs'}",
                        "log.progress=false", *overrides])


def run_ranks(nproc: int, config: Path, *overrides: str, timeout: int = 300):
    """Run ``python -m training`` as ``nproc`` torchrun ranks (a real process group, gloo)."""
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(_free_port()), "-m", "training", str(config), "log.progress=false",
           *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int = 2):
    """A separate Ray head (`ray start --head --block` in a child) on its own ports, for real
    `ray job submit`s; yields ``submit(args, timeout) -> CompletedProcess`` and stops the head by
    its own PID, so it neither collides with nor stops another Ray of the test session."""
    import shutil
    import subprocess
    import sys
    import time
    bin_dir = Path(sys.executable).parent
    port, dash, agent, agent_grpc, metrics, rt_env = (_free_port() for _ in range(6))
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"ray-lb-{port}"  # short: Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", str(num_cpus),
         "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
         "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
         "--disable-usage-stats", "--temp-dir", str(temp)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The submitting CLI authenticates with the token the head wrote to ~/.ray/auth_token.
    submit_env = dict(env, RAY_AUTH_MODE="token")

    def submit(args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
        cmd = [str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
               "--working-dir", str(REPO), "--", sys.executable, *args]
        for _ in range(40):  # the head and its job agent come up some seconds after start
            job = subprocess.run(cmd, env=submit_env, capture_output=True, text=True, timeout=timeout)
            text = job.stdout + job.stderr
            if job.returncode == 0 or not any(m in text for m in ("No available agent", "Failed to connect",
                                                                    "Connection refused")):
                return job
            time.sleep(3)
        return job

    submit.address = f"127.0.0.1:{port}"
    try:
        yield submit
    finally:
        head.terminate()  # `ray start --block` tears down the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def load_adapter_tensors(checkpoint: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(checkpoint / "adapter_model.safetensors"))


@pytest.fixture(scope="session")
def tiny_wan_run(tiny_wan, video_shards, tmp_path_factory) -> Path:
    """A trained tiny Wan run folder with two complete checkpoints (steps 2 and 4)."""
    from training.trainer import Trainer
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path_factory.mktemp("eval-run"), "train.max_steps=4",
                      "checkpoint.every_steps=2", "checkpoint.keep_last=null", "log.tensorboard=false",
                      "optim.warmup_steps=0")
    return Trainer(cfg).run().final_checkpoint.parent.parent


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, loopback only) shared by a module's tests."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, runtime_env={"env_vars": {
                 "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


# Tiers (pyproject.toml [tool.pytest.ini_options] markers): a test is in exactly one. Modules and
# tests mark the heavy tiers; everything else is "fast", so `-m fast` needs no upkeep.
HEAVY_TIERS = ("slow", "distributed", "realgeom", "browser", "slurm")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = [t for t in HEAVY_TIERS if item.get_closest_marker(t)]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is in more than one tier: {tiers}")
        if not tiers:
            item.add_marker(pytest.mark.fast)
