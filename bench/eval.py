"""Eval benchmark, all measured in one run on this machine.

1. Generation throughput of the Ray eval stage with 1 vs 2 actors (tiny Wan, 1 torch thread
   per actor, base + one adapter): samples/s over the whole generate() call (actor start and
   pipeline load included, as a user waits for them) and over the samples alone (from the first
   sample's start to the last sample's end, as the actors recorded them); and whether both runs
   wrote identical bytes.
2. Fréchet distance for 2048 x 400 features (the FVD shape): ours vs the scipy ``sqrtm``
   reference (bench/frechet.py), time and relative difference.

    python -m bench.eval [--prompts 8] [--reps 4] [--steps 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_TRAIN = REPO / "configs" / "train" / "tiny-wan.yaml"
TINY_EVAL = REPO / "configs" / "eval" / "tiny-wan.yaml"
WORDS = ["red", "blue", "green", "yellow"], ["circle", "square", "triangle"], ["left", "right", "up", "down"]


def _setup(out: Path) -> tuple[Path, Path]:
    from training.config import load_config
    from training.data.synthetic import make_data
    from training.models import get_spec
    from training.trainer import Trainer
    model = get_spec("wan").make_tiny(out / "wan", seed=0)
    data = out / "data"
    make_data("video", data, shards=2, samples_per_shard=8, seed=0, size=(32, 32), frames=9)
    cfg = load_config(TINY_TRAIN, [f"model.path={model}", f"data.shards={data}", f"output_dir={out / 'runs'}",
                                   "train.max_steps=2", "checkpoint.every_steps=2", "log.progress=false",
                                   "log.tensorboard=false"])
    return model, Trainer(cfg).run().final_checkpoint


def generation(out: Path, prompts: int, reps: int, steps: int) -> dict[int, dict[str, float]]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from eval.config import load_eval_config
    from eval.generation import generate, make_plan
    from cluster.eval import ray_executor

    model, adapter = _setup(out)
    lines = [f"a {WORDS[0][i % 4]} {WORDS[1][i % 3]} moving {WORDS[2][(i // 3) % 4]}" for i in range(prompts)]
    (out / "prompts.txt").write_text("\n".join(lines) + "\n")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    result, digests = {}, {}
    try:
        for workers in (1, 2):
            cfg = load_eval_config(TINY_EVAL, [
                f"name=bench-{workers}", f"output_dir={out / 'evals'}", f"model.path={model}",
                f"variants.adapters=[{adapter}]", f"prompts.file={out / 'prompts.txt'}",
                f"prompts.samples_per_prompt={reps}", f"sampling.steps={steps}", "reference.shards=null",
                "metrics.enabled=false", f"parallel.num_workers={workers}"])
            plan = make_plan(cfg)
            start = time.perf_counter()
            records = generate(plan, ray_executor, progress=False)
            wall = time.perf_counter() - start
            per_sample = statistics.median(r["timings"]["generate_s"] + r["timings"]["write_s"] for r in records)
            span = max(r["timings"]["end"] for r in records) - min(r["timings"]["start"] for r in records)
            result[workers] = {"samples": len(records), "wall_s": wall, "samples_per_s_wall": len(records) / wall,
                               "samples_per_s_steady": len(records) / span, "median_s_per_sample": per_sample}
            digests[workers] = hashlib.sha256("".join(r["file_sha256"] for r in records).encode()).hexdigest()
    finally:
        ray.shutdown()
    result["identical_outputs"] = digests[1] == digests[2]  # type: ignore[assignment]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="lorabench-bench-eval-"))

    gen = generation(out, args.prompts, args.reps, args.steps)
    one, two = gen[1], gen[2]
    print(f"\n== generation, tiny Wan 32x32x9, {args.steps} steps, base + 1 adapter, "
          f"{one['samples']} samples (1 torch thread per actor, {os.cpu_count()} CPUs)")
    print(f"{'actors':>6} {'wall s':>8} {'samples/s (wall)':>17} {'samples/s (steady)':>19} {'median s/sample':>16}")
    for w in (1, 2):
        g = gen[w]
        print(f"{w:>6} {g['wall_s']:>8.2f} {g['samples_per_s_wall']:>17.2f} {g['samples_per_s_steady']:>19.2f} "
              f"{g['median_s_per_sample']:>16.3f}")
    print(f"ratio 2/1 actors: wall {two['samples_per_s_wall'] / one['samples_per_s_wall']:.2f}x, "
          f"steady {two['samples_per_s_steady'] / one['samples_per_s_steady']:.2f}x; "
          f"identical bytes with 1 and 2 actors: {gen['identical_outputs']}")

    from bench.frechet import main as frechet_main
    print("\n== Fréchet distance, 2048 x 400 features")
    frechet_main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
