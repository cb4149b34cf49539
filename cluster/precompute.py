"""``python -m cluster.precompute CONFIG [key=value ...]``: the latent cache on a Ray actor pool.

Each actor loads the VAE and text encoders once (one GPU each with ``parallel.use_gpu=true``;
the transformer is never loaded) and encodes whole source shards; the driver records each
finished shard in the cache index as soon as it is written. A cache shard's bytes depend only
on its source shard and the settings, so the cache is the same with 1 or N actors, in any
order; a re-run (after a crash, or with changed sources) encodes only what is missing or
stale. ``data.cache`` must be on storage every node shares. Uses the training config:
``parallel.num_workers`` actors (``parallel.backend=none``: this process).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

from training.cache.precompute import PrecomputePlan, plan_precompute, previous_file, run_local
from cluster.entry import driver_main
from training.config import RunConfig, load_config
from training.console import quiet_third_party

log = logging.getLogger("lorabench.cluster")


class PrecomputeWorker:
    """One Ray actor: the encoders, loaded once, for shard after shard."""

    def __init__(self, plan: PrecomputePlan, threads: int) -> None:
        import torch

        from training.cache.encode import CacheEncoder
        quiet_third_party()
        torch.set_num_threads(threads)  # the same in every actor: CPU kernels then give the same bytes
        self.encoder = CacheEncoder(plan.cfg, plan.settings, device="cuda" if plan.cfg.parallel.use_gpu else "cpu")
        self.root = plan.root

    def encode(self, source: str, previous: Optional[str]) -> tuple[str, dict[str, Any]]:
        return source, self.encoder.encode_shard(source, self.root, previous)


def run_ray(plan: PrecomputePlan, progress: bool = True) -> dict[str, Any]:
    import ray
    from ray.util import ActorPool

    from training.console import progress as progress_bar
    if not plan.todo:
        return plan.totals
    par = plan.cfg.parallel
    n = min(par.num_workers, len(plan.todo))
    actor_cls = ray.remote(num_cpus=par.cpus_per_worker, num_gpus=1 if par.use_gpu else 0)(PrecomputeWorker)
    actors = [actor_cls.remote(plan, par.threads) for _ in range(n)]
    pool = ActorPool(actors)
    bar = progress_bar(total=plan.todo_samples, desc="precompute", unit="sample", disable=not progress)
    try:
        for source in plan.todo:
            pool.submit(lambda a, s: a.encode.remote(s, previous_file(plan, s)), source)
        while pool.has_next():
            try:
                source, entry = pool.get_next_unordered()
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)  # the actor's own error (DataError naming the sample...)
                raise (cause if isinstance(cause, Exception) else e) from None
            plan.record(source, entry)
            bar.update(entry["samples"])
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return plan.totals


def run(cfg: RunConfig, progress: bool = True, verify: bool = False) -> dict[str, Any]:
    """Plan (cheap checks, what will be written), then encode what is missing; returns totals."""
    start = time.perf_counter()
    plan = plan_precompute(cfg, verify=verify)
    print(plan.describe(), flush=True)
    if cfg.parallel.backend == "none" or not plan.todo:  # nothing to do: no Ray start
        totals = run_local(plan, progress=progress)
    else:
        import ray

        from cluster.train import check_resources, connect
        info = connect(cfg.parallel)
        try:
            check_resources(cfg.parallel)
            totals = run_ray(plan, progress=progress)
        finally:
            if info.started_here:
                ray.shutdown()
    seconds = time.perf_counter() - start
    return dict(totals, seconds=round(seconds, 3), cache=str(plan.root),
                samples_per_s=round(totals["encoded"] / seconds, 3) if totals["encoded"] else None)


def summary_text(totals: dict[str, Any]) -> str:
    rate = (f", {totals['samples_per_s']:g} samples/s end to end (model loading and start-up included)"
            if totals.get("samples_per_s") else "")
    return (f"precompute done in {totals['seconds']:.1f}s: {totals['shards']} shard(s) written, "
            f"{totals['encoded']} sample(s) encoded, {totals['reused']} reused{rate}\n"
            f"cache: {totals['cache']} (train from it with data.cache={totals['cache']})")


def _body(argv: list[str]) -> int:
    verify = "--verify" in argv
    args = [a for a in argv if a != "--verify"]
    print(summary_text(run(load_config(args[0], args[1:]), verify=verify)))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return driver_main("cluster.precompute", __doc__, "usage: python -m cluster.precompute CONFIG [--verify] "
                       "[key=value ...]\n  e.g. data.cache=/shared/cache/wan-480p parallel.backend=ray "
                       "parallel.num_workers=8 parallel.use_gpu=true", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
