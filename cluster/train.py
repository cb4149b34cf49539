"""``python -m cluster.train CONFIG [key=value ...]``: a training run as a Ray Train job.

The same command works on a laptop and on a cluster:

- with ``RAY_ADDRESS`` set (``ray job submit`` sets it) or ``parallel.ray_address``, it joins
  that cluster;
- otherwise it starts an embedded local Ray bound to 127.0.0.1 and stops it at the end.

Each Ray worker runs the very same loop as ``lorabench train`` (training.trainer.Trainer), as
one rank of a DeepSpeed group; Ray provides the process group (gloo on CPU, NCCL on GPU) and
restarts the worker group after a worker dies (``parallel.max_failures``), every restart
resuming from the latest complete checkpoint in the run folder. Checkpoints are ours
(atomic, manifest-verified) and stay in ``output_dir/run_name``; Ray's own bookkeeping goes
to ``output_dir/run_name/ray``. On a multi-node cluster ``output_dir`` must be on storage
all nodes share.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cluster.entry import driver_main
from training.config import ConfigError, ParallelSettings, RunConfig, load_config
from training.console import quiet_third_party

log = logging.getLogger("lorabench.cluster")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Variables a worker needs to see as the driver does (set before torch/DeepSpeed import).
_PASS_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "OMP_NUM_THREADS")


class ResourceError(ConfigError):
    """The cluster can never satisfy the request (as opposed to being busy right now)."""


@dataclass
class RayInfo:
    address: str
    dashboard_url: Optional[str]
    started_here: bool


# ----------------------------------------------------------------------------- connection


def connect(par: ParallelSettings) -> RayInfo:
    """Join the configured cluster, or start an embedded local Ray on 127.0.0.1."""
    # Without this Ray may advertise the machine's external interface even when told
    # 127.0.0.1; it is read when ray is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return RayInfo(ray.get_runtime_context().gcs_address, _dashboard_url(), started_here=False)
    address = par.ray_address or os.environ.get("RAY_ADDRESS")
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    if address:
        ctx = ray.init(address=address, runtime_env={"env_vars": env} if env else None,
                       log_to_driver=True)
        return RayInfo(address, _http(getattr(ctx, "dashboard_url", None)) or _dashboard_url(), started_here=False)
    need = math.ceil(par.num_workers * par.cpus_per_worker)
    # Workers import this repo; an embedded Ray runs on this machine, so the path is valid.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ctx = ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need),
                   include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                   runtime_env={"env_vars": env}, configure_logging=False)
    return RayInfo(ctx.address_info.get("gcs_address", "local"), _http(getattr(ctx, "dashboard_url", None)),
                   started_here=True)


def _http(url: Optional[str]) -> Optional[str]:
    return f"http://{url}" if url and "://" not in url else url


def _dashboard_url() -> Optional[str]:
    try:
        import ray
        return _http(ray._private.worker.get_dashboard_url())  # private, but the only way once connected
    except Exception:
        return None


def check_resources(par: ParallelSettings) -> dict[str, Any]:
    """Fail now if the cluster can never place the worker group (instead of waiting forever).

    Compares with the cluster's *capacity* node by node (a worker must fit on one node), not
    with what is free right now: busy resources are worth waiting for, missing ones are not.
    """
    import ray

    want = {"CPU": par.cpus_per_worker, "GPU": 1.0 if par.use_gpu else 0.0}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits, described = 0, []
    for n in nodes:
        res = n.get("Resources", {})
        per = [math.floor(res.get(k, 0.0) / v + 1e-9) for k, v in want.items() if v > 0]
        fits += min(per) if per else 0
        described.append(f"{n.get('NodeManagerAddress', '?')}: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")
    if fits < par.num_workers:
        per_worker = f"{par.cpus_per_worker:g} CPU" + (" + 1 GPU" if par.use_gpu else "")
        raise ResourceError(
            f"parallel.num_workers={par.num_workers} workers of {per_worker} each cannot be placed: the Ray "
            f"cluster has room for {fits} ({len(nodes)} node(s): {'; '.join(described) or 'none'}). Lower "
            f"parallel.num_workers or parallel.cpus_per_worker"
            + (", set parallel.use_gpu=false" if par.use_gpu else "") + ", or add nodes.")
    return {"nodes": len(nodes), "worker_slots": fits}


# ----------------------------------------------------------------------------- worker


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray worker = one rank: the same Trainer as the single-process path."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    quiet_third_party()  # each worker is a fresh process: its library notices would repeat
    from training.trainer import Trainer
    cfg = load_config(None, base=config["run_config"])
    Trainer(cfg).run()


# ----------------------------------------------------------------------------- driver


def prepare_config(cfg: RunConfig) -> RunConfig:
    """Validate what can be validated on the driver, and make worker restarts resume."""
    from training.preflight import preflight

    preflight(cfg, rank=0, world_size=cfg.parallel.num_workers)  # the workers' own checks, before Ray
    data = cfg.to_dict()
    # Absolute paths: workers may start in another directory (ray job working dirs).
    data["output_dir"] = str(Path(cfg.output_dir).resolve())
    for key in ("model", "deepspeed"):
        field = "path" if key == "model" else "config"
        if data[key].get(field) and Path(data[key][field]).exists():
            data[key][field] = str(Path(data[key][field]).resolve())
    data["data"]["shards"] = _absolute_shards(data["data"]["shards"])
    # Restarts after a worker failure must continue from the latest checkpoint, not start over;
    # a fresh run has none, so "auto" starts it from scratch.
    if data["train"]["resume"] is None:
        data["train"]["resume"] = "auto"
    return RunConfig.model_validate(data)


def _absolute_shards(spec: Any) -> Any:
    """Local shard paths and brace patterns made absolute (the README's `data.shards: data/video`
    is relative to where the driver runs); URLs and ``pipe:`` specs are left as they are."""
    from training.data.shards import is_remote
    if isinstance(spec, list):
        return [_absolute_shards(s) for s in spec]
    return spec if is_remote(spec) or Path(spec).is_absolute() else str(Path.cwd() / spec)


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg`` on Ray; returns the run's result.json contents."""
    import ray
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from training.layout import RunLayout

    if cfg.parallel.backend != "ray":
        raise ConfigError("cluster.train runs parallel.backend=ray configs (set parallel.backend=ray)")
    worker_cfg = prepare_config(cfg)
    info = connect(cfg.parallel)
    try:
        slots = check_resources(cfg.parallel)
        par = cfg.parallel
        print(f"Ray cluster {info.address}: {slots['nodes']} node(s), room for {slots['worker_slots']} "
              f"worker(s); dashboard: {info.dashboard_url or 'not available'}", flush=True)
        run_dir = Path(worker_cfg.output_dir) / cfg.run_name
        resources = {"CPU": par.cpus_per_worker}
        if par.use_gpu:
            resources["GPU"] = 1
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"run_config": worker_cfg.to_dict()},
            scaling_config=ScalingConfig(num_workers=par.num_workers, use_gpu=par.use_gpu,
                                         resources_per_worker=resources),
            run_config=RayRunConfig(name=cfg.run_name, storage_path=str(run_dir / "ray"),
                                    failure_config=FailureConfig(max_failures=par.max_failures)),
        )
        start = time.perf_counter()
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        body = json.loads(RunLayout(run_dir).result.read_text())
        body["wall_seconds"] = round(time.perf_counter() - start, 3)
        body["run_dir"] = str(run_dir)
        return body
    finally:
        if info.started_here:
            ray.shutdown()


def _body(argv: list[str]) -> int:
    from training.summary import exit_code
    body = run(load_config(argv[0], ["parallel.backend=ray", *argv[1:]]))
    print_summary(body)
    return exit_code(Path(body["run_dir"]))  # 75 when stopped on request (SLURM requeues on it)


def main(argv: Optional[list[str]] = None) -> int:
    return driver_main("cluster.train", __doc__, "usage: python -m cluster.train CONFIG [key=value ...]\n"
                       "  (parallel.backend=ray is implied; e.g. parallel.num_workers=2 "
                       "deepspeed.config=configs/deepspeed/zero2.json)", _body, argv)


def print_summary(body: dict[str, Any]) -> None:
    from training.summary import run_summary
    print(f"{run_summary(Path(body['run_dir']))}\nwall time:        {body['wall_seconds']:.1f}s (Ray start, "
          "workers and the run)")


if __name__ == "__main__":
    sys.exit(main())
