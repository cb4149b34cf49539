"""Distributed training benchmark, all measured in one run on this machine.

1. Throughput: global samples/s of the tiny Wan LoRA with 1 vs 2 Ray workers (DeepSpeed
   ZeRO-2, 1 torch thread each), median over steps after warm-up.
2. Memory: bytes of parameters + gradients + optimizer state held by each rank for ZeRO-0,
   ZeRO-2 and ZeRO-3 with 2 ranks (torchrun), read from the engine's own partitions. ZeRO-3
   runs with stage3_param_persistence_threshold=0 so the tiny model's small tensors are
   partitioned as a large model's would be.

    python -m bench.distributed [--steps 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "train" / "tiny-wan.yaml"
DS = REPO / "configs" / "deepspeed"


def _metrics(run_dir: Path, skip: int) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return rows[skip:]


def throughput(model: Path, data: Path, out: Path, steps: int) -> dict[int, float]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from cluster.train import run
    from training.config import load_config

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO),
                                                                "OMP_NUM_THREADS": "1"}})
    result = {}
    try:
        for workers in (1, 2):
            cfg = load_config(TINY, [f"model.path={model}", f"data.shards={data}", f"output_dir={out}",
                                     f"run_name=tp-{workers}", f"train.max_steps={steps}",
                                     f"checkpoint.every_steps={steps}", "log.progress=false",
                                     "parallel.backend=ray", f"parallel.num_workers={workers}",
                                     "parallel.cpus_per_worker=1", f"deepspeed.config={DS / 'zero2.json'}"])
            run(cfg)
            rows = _metrics(out / f"tp-{workers}", skip=5)
            result[workers] = statistics.median(r["samples_per_s"] for r in rows)
    finally:
        ray.shutdown()
    return result


def memory(model: Path, data: Path, out: Path) -> dict[str, list[dict]]:
    z3 = json.loads((DS / "zero3.json").read_text())
    z3["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (out / "zero3-all.json").write_text(json.dumps(z3))
    stages = {"ZeRO-0": ["deepspeed.zero_stage=0"], "ZeRO-2": [f"deepspeed.config={DS / 'zero2.json'}"],
              "ZeRO-3": [f"deepspeed.config={out / 'zero3-all.json'}"]}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    report = {}
    for name, extra in stages.items():
        run_name = "mem-" + name.lower()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                        "training", str(TINY), f"model.path={model}", f"data.shards={data}",
                        f"output_dir={out}", f"run_name={run_name}", "train.max_steps=2",
                        "checkpoint.every_steps=2", "log.progress=false", *extra],
                       check=True, cwd=REPO, env=env, capture_output=True)
        report[name] = json.loads((out / run_name / "result.json").read_text())["memory_per_rank"]
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.data.synthetic import make_data
    from training.models import get_spec

    out = Path(args.out or tempfile.mkdtemp(prefix="lorabench-bench-"))
    model = get_spec("wan").make_tiny(out / "wan", seed=0)
    data = out / "data"
    make_data("video", data, shards=4, samples_per_shard=16, seed=0, size=(32, 32), frames=9)

    tp = throughput(model, data, out, args.steps)
    mem = memory(model, data, out)
    print(f"\nthroughput (tiny Wan, batch 4 x 9x32x32, ZeRO-2, 1 torch thread/worker, median of steps 6..{args.steps}):")
    print("| workers | global samples/s | vs 1 worker |\n|---|---|---|")
    for w, sps in tp.items():
        print(f"| {w} | {sps:.1f} | {sps / tp[1]:.2f}x |")
    print("\nper-rank bytes with 2 ranks (params + grads + optimizer state, from the engine's partitions):")
    print("| stage | rank | params | grads | optimizer | total | vs ZeRO-0 |\n|---|---|---|---|---|---|---|")
    base = sum(mem["ZeRO-0"][0].values())
    for name, ranks in mem.items():
        for r, m in enumerate(ranks):
            total = sum(m.values())
            print(f"| {name} | {r} | {m['params']:,} | {m['grads']:,} | {m['optimizer']:,} | {total:,} | "
                  f"{total / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
