"""``python -m cluster.eval CONFIG [key=value ...]``: generation on a pool of Ray actors, then metrics.

Each actor holds one pipeline (one GPU each with ``parallel.use_gpu=true``; CPU actors
otherwise) and renders tasks of one variant at a time, swapping adapters on its resident base
model. Tasks go to whichever actor is free; since every sample's noise comes from its own
seed and its files are keyed by sample id, the outputs are the same with 1 or N actors and in
any order. Like ``cluster.train`` it joins ``RAY_ADDRESS`` / ``parallel.ray_address`` or
starts an embedded local Ray on 127.0.0.1. On a multi-node cluster ``output_dir`` must be on
storage every node shares.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

from eval.config import EvalConfig, load_eval_config
from eval.generation import Plan
from eval.worker import SampleWorker, TaskResult
from training.config import ConfigError
from cluster.entry import driver_main

log = logging.getLogger("lorabench.cluster")


def ray_executor(plan: Plan, on_done: Callable[[TaskResult], None]) -> None:
    """Run the plan's tasks on ``parallel.num_workers`` actors (Ray must be connected)."""
    import ray
    from ray.util import ActorPool

    if not plan.tasks:
        return
    par = plan.cfg.parallel
    n = min(par.num_workers, len(plan.tasks))  # an actor with nothing to do would still load a model
    actor_cls = ray.remote(num_cpus=par.cpus_per_worker, num_gpus=1 if par.use_gpu else 0)(SampleWorker)
    actors = [actor_cls.remote(plan.settings, str(plan.layout.root)) for _ in range(n)]
    pool = ActorPool(actors)
    try:
        for task in plan.tasks:
            pool.submit(lambda a, t: a.run.remote(t.variant, t.rows), task)
        while pool.has_next():
            try:
                on_done(pool.get_next_unordered())
            except ray.exceptions.RayTaskError as e:
                # Re-raise the worker's own exception (AdapterError with its report table, ...)
                # so the CLI shows the cause, not a Ray wrapper.
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, Exception) else e) from None
    finally:
        for a in actors:
            ray.kill(a)


def metrics_placement(cfg: EvalConfig, driver_has_gpu: Optional[bool] = None) -> str:
    """Where the metric feature extractors run: 'driver' or 'gpu-task' (a Ray task on a GPU node).

    Decided before any sample is generated: a head node without a GPU must not find out, after
    hours of generation, that ``metrics.device=cuda`` cannot run there.
    """
    import torch
    m, par = cfg.metrics, cfg.parallel
    has_gpu = torch.cuda.is_available() if driver_has_gpu is None else driver_has_gpu
    if not m.enabled or has_gpu or m.device == "cpu":
        return "driver"
    gpu_actors = par.backend == "ray" and par.use_gpu
    if gpu_actors:  # the GPUs are where the actors are: extract features there too
        return "gpu-task"
    if m.device == "cuda":
        raise ConfigError("metrics.device=cuda, but this driver has no GPU and the eval has no GPU actors "
                          "(parallel.use_gpu=false): set metrics.device=auto (CPU here) or parallel.use_gpu=true "
                          "(features are then extracted in a Ray task on a GPU node)")
    return "driver"


def _finish_on_gpu(plan: Plan, records: list[dict[str, Any]], progress: bool) -> dict[str, Any]:
    """results.json computed in a Ray task holding one GPU (output_dir is shared storage)."""
    import ray

    from eval.results import finish
    task = ray.remote(num_gpus=1, num_cpus=plan.cfg.parallel.cpus_per_worker)(finish)
    try:
        return ray.get(task.remote(plan, records, False))
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, Exception) else e) from None


def run(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Plan, generate (on Ray or in this process), compute metrics; returns results.json's body."""
    from eval.generation import generate, make_plan, run_local
    from eval.results import finish

    placement = metrics_placement(cfg)  # before anything is generated
    plan = make_plan(cfg)  # validates everything before Ray starts or a model loads
    if cfg.parallel.backend == "none":
        records = generate(plan, run_local, progress=progress)
        return finish(plan, records, progress=progress)
    import ray

    from cluster.train import check_resources, connect
    info = connect(cfg.parallel)
    try:
        slots = check_resources(cfg.parallel)
        print(f"Ray cluster {info.address}: {slots['nodes']} node(s), room for {slots['worker_slots']} "
              f"actor(s); dashboard: {info.dashboard_url or 'not available'}; metrics on the "
              f"{'driver' if placement == 'driver' else 'GPU nodes (Ray task)'}", flush=True)
        records = generate(plan, ray_executor, progress=progress)
        if placement == "gpu-task":
            log.info("this driver has no GPU: extracting metric features in a Ray task on a GPU node")
            return _finish_on_gpu(plan, records, progress)
    finally:
        if info.started_here:
            ray.shutdown()
    return finish(plan, records, progress=progress)


def _body(argv: list[str]) -> int:
    from eval.results import summary_text
    print(summary_text(run(load_eval_config(argv[0], argv[1:]))))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return driver_main("cluster.eval", __doc__, "usage: python -m cluster.eval CONFIG [key=value ...]\n"
                       "  e.g. parallel.num_workers=4 parallel.use_gpu=true prompts.samples_per_prompt=4", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
