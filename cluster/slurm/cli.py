"""``lorabench slurm render|submit CONFIG [--nodes N --gpus-per-node G --time T ...] [key=value ...]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .render import SlurmRequest, check_cluster, render, submit, write_script


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lorabench slurm",
        description="Write (render) or write and submit (submit) an sbatch script that runs a training config "
                    "on a SLURM allocation: Ray started on every node (head on the first), the driver on the head, "
                    "the pre-timeout signal turned into a checkpoint and a requeue. The script goes to "
                    "<output_dir>/<run_name>/slurm/job.sbatch, logs next to it.")
    p.add_argument("action", choices=["render", "submit"])
    p.add_argument("config", type=Path, help="training YAML config")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one worker (rank) each")
    p.add_argument("--cpus-per-node", type=int, default=None,
                   help="CPUs per node (default: the node's workers x parallel.cpus_per_worker, + 1 for the driver)")
    p.add_argument("--time", help="time limit (SLURM format, e.g. 04:00:00)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--mem", help="memory per node (SLURM format, e.g. 200G)")
    p.add_argument("--job-name")
    p.add_argument("--signal-margin", type=int, default=300,
                   help="seconds before the time limit at which the run checkpoints and the job requeues (300)")
    p.add_argument("--join-timeout", type=int, default=300, help="seconds to wait for every node to join Ray")
    p.add_argument("--launcher", choices=["ray", "torchrun"], default="ray")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable)")
    return p


def main(argv: list[str]) -> int:
    from training.config import load_config

    p = parser()
    args, extra = p.parse_known_args(argv)
    stray = [t for t in extra if "=" not in t or t.startswith("-")]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")
    req = SlurmRequest(nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                       time=args.time, partition=args.partition, account=args.account, mem=args.mem,
                       job_name=args.job_name, signal_margin=args.signal_margin, join_timeout=args.join_timeout,
                       launcher=args.launcher, sbatch=args.sbatch)
    backend = ["parallel.backend=ray"] if args.launcher == "ray" else []
    cfg = load_config(args.config, [*backend, *extra])
    text = render(args.config, extra, cfg, req)
    if args.action == "submit":
        check_cluster(req)  # before anything is queued: the request must fit some nodes
        from training.preflight import preflight
        preflight(cfg, rank=0, world_size=cfg.parallel.num_workers)  # bad config or data fails now, not in the queue
    path = write_script(text, cfg)
    if args.action == "render":
        print(f"wrote {path}\nsubmit it with: sbatch {path}   (or: lorabench slurm submit ...)")
        return 0
    job = submit(path)
    print(f"submitted job {job}: {path}\nlogs: {path.parent}/slurm-{job}.out; run folder {path.parent.parent}")
    return 0
