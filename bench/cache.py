"""Latent cache benchmark: the same tiny Wan run on-the-fly vs from the cache, one run, side by side.

Same tiny Wan model, LoRA, shards, seed and steps; one process, one torch thread; the trainer
as shipped (``training.trainer.Trainer``, the config's ``data.prefetch``), measured in one run:

1. Step time: median ``step_seconds`` after warm-up, on-the-fly (decode + VAE/text encode +
   fwd/bwd/step) vs from the cache (read + check + fwd/bwd/step, no encoder loaded); ratio.
2. Loader stall: time the step spends waiting in ``next()`` on the trainer's batch iterator
   (the prefetcher), as a fraction of step time, for both runs.
3. Losses of the two runs, step by step (max |difference|; Wan caches the posterior mean, so
   they agree to float rounding).
4. Precompute throughput (``cluster.precompute.run``, as ``lorabench precompute`` runs it): in
   this process (no Ray), and on Ray with 1 and 2 actors (1 CPU, 1 torch thread each), each into
   a fresh cache folder; "encode" samples/s count from the first shard's encoding start to the
   last shard recorded (no Ray or actor start-up, no encoder loading), "end-to-end" is the whole
   ``run()`` (plan, actor start, encoder load, encoding); and the sha256 of each cache's shard
   files, which must be the same for every worker count.

    python -m bench.cache [--steps 30] [--warmup 5] [--shards 4] [--samples-per-shard 16]
                          [--workers 1,2] [--no-ray] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: stable timings
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import hashlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "train" / "tiny-wan.yaml"
ISSUE_STEP_RATIO = 3.0      # issue 13: cached at least 3x faster per step
ISSUE_STALL = 0.02          # issue 13: loader stall under 2% of step time (cached run)
LOSS_TOL = 1e-6


# ----------------------------------------------------------------------------- training


class _Timed:
    """The trainer's batch iterator with the time each ``next()`` blocks recorded."""

    def __init__(self, inner: Iterator[Any], waits: list[float]) -> None:
        self.inner, self.waits = inner, waits

    def __iter__(self) -> "_Timed":
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        item = next(self.inner)
        self.waits.append(time.perf_counter() - t0)
        return item


def _timed_trainer_class():
    from training.data.prefetch import Prefetcher
    from training.trainer import Trainer

    class TimedTrainer(Trainer):
        """The shipped Trainer; only its batch iterator is wrapped and its step metrics kept."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.bench_waits: list[float] = []
            self.bench_steps: list[float] = []
            self._bench_inner: Optional[Iterator[Any]] = None

        def _batches(self):
            self._bench_inner = super()._batches()
            return _Timed(self._bench_inner, self.bench_waits)

        def _optimizer_step(self, batch_iter):
            metrics, position = super()._optimizer_step(batch_iter)
            self.bench_steps.append(metrics["step_seconds"])
            return metrics, position

        def run(self):
            try:
                return super().run()
            finally:
                # The loop closes a Prefetcher it sees; ours is wrapped, so close it here.
                if isinstance(self._bench_inner, Prefetcher):
                    self._bench_inner.close()

    return TimedTrainer


def train(base: list[str], run_name: str, extra: list[str], warmup: int) -> dict[str, Any]:
    from training.config import load_config

    cfg = load_config(TINY, base + [f"run_name={run_name}", *extra])
    trainer = _timed_trainer_class()(cfg)
    t0 = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - t0
    steps, waits = trainer.bench_steps, trainer.bench_waits
    if cfg.train.grad_accum != 1 or len(waits) != len(steps):
        raise SystemExit(f"expected one batch per step, got {len(waits)} batches for {len(steps)} steps")
    s, w = steps[warmup:], waits[warmup:]
    return {"run_name": run_name, "prefetch": cfg.data.prefetch, "timed_steps": len(s),
            "median_step_s": statistics.median(s), "mean_step_s": statistics.mean(s),
            "median_wait_s": statistics.median(w), "max_wait_s": max(w),
            "stall_fraction": sum(w) / sum(s), "wall_s": wall,
            "encoders_loaded": sorted(k for k, v in trainer.pipe.components.items()
                                      if isinstance(v, torch.nn.Module) and k != "transformer"),
            "losses": {int(k): float(v) for k, v in result.losses.items()}}


# ----------------------------------------------------------------------------- precompute


@contextlib.contextmanager
def _record_times(stamps: list[tuple[float, dict[str, Any]]]):
    """Time each finished shard as the driver records it (PrecomputePlan.record, both paths)."""
    from training.cache.precompute import PrecomputePlan

    original = PrecomputePlan.record

    def record(self, source, entry):
        stamps.append((time.perf_counter(), entry))
        return original(self, source, entry)

    PrecomputePlan.record = record
    try:
        yield
    finally:
        PrecomputePlan.record = original


def shard_digest(cache: Path) -> tuple[str, int, int]:
    """sha256 over (relative name, sha256) of every file under cache/shards/; files, bytes."""
    files = sorted(p for p in (cache / "shards").rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(cache).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest(), len(files), sum(p.stat().st_size for p in files)


def precompute(base: list[str], cache: Path, extra: list[str]) -> dict[str, Any]:
    from cluster.precompute import run
    from training.config import load_config

    cfg = load_config(TINY, base + [f"data.cache={cache}", *extra])
    stamps: list[tuple[float, dict[str, Any]]] = []
    with _record_times(stamps):
        totals = run(cfg, progress=False)
    if not stamps or not totals.get("encoded"):
        raise SystemExit(f"precompute into {cache} encoded nothing: {totals}")
    # Clocks: perf_counter is CLOCK_MONOTONIC on Linux, shared by the driver and its actors.
    start = min(t - e["seconds"] for t, e in stamps)
    window = max(t for t, _ in stamps) - start
    busy = sum(e["seconds"] for _, e in stamps)
    digest, files, size = shard_digest(cache)
    return {"encoded": totals["encoded"], "shards": totals["shards"], "reused": totals["reused"],
            "end_to_end_s": totals["seconds"], "end_to_end_sps": totals["encoded"] / totals["seconds"],
            "encode_window_s": window, "encode_sps": totals["encoded"] / window,
            "per_worker_sps": totals["encoded"] / busy, "shard_sha256": digest, "shard_files": files,
            "shard_bytes": size}


def ray_start(workers: int) -> float:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False,
             _node_ip_address="127.0.0.1", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                       "HF_HUB_OFFLINE": "1"}})
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- report


def _ms(s: float) -> str:
    return f"{s * 1000:8.1f}"


def report(args: argparse.Namespace, command: str, setup: dict[str, Any], fly: dict[str, Any],
           cached: dict[str, Any], loss_diff: float, pre: dict[str, dict[str, Any]],
           ray_init_s: Optional[float]) -> list[str]:
    lines = [f"\ncommand: {command}",
             f"tiny Wan ({TINY.relative_to(REPO)}): batch {setup['batch']} x {setup['frames']}x{setup['height']}x"
             f"{setup['width']}, {args.shards} shards x {args.samples_per_shard} samples, data.prefetch="
             f"{fly['prefetch']}, 1 torch thread, {os.cpu_count()} CPU(s); {args.steps} timed steps after "
             f"{args.warmup} warm-up; workdir {setup['out']}",
             "",
             "training, same run on-the-fly vs from the cache (Trainer, in this process):",
             "| mode | median step ms | mean step ms | median wait ms | max wait ms | loader stall | encoders loaded |",
             "|---|---|---|---|---|---|---|"]
    for name, r in (("on-the-fly", fly), ("cached", cached)):
        lines.append(f"| {name} | {_ms(r['median_step_s'])} | {_ms(r['mean_step_s'])} | {_ms(r['median_wait_s'])} | "
                     f"{_ms(r['max_wait_s'])} | {100 * r['stall_fraction']:6.2f}% | "
                     f"{', '.join(r['encoders_loaded']) or 'none'} |")
    ratio = fly["median_step_s"] / cached["median_step_s"]
    ok = lambda c: "ok" if c else "MISSED"  # noqa: E731
    lines += [f"  step time on-the-fly / cached = {ratio:.2f}x   (target >= {ISSUE_STEP_RATIO:g}x: "
              f"{ok(ratio >= ISSUE_STEP_RATIO)})",
              f"  loader stall, cached = {100 * cached['stall_fraction']:.2f}% of step time   (target < "
              f"{100 * ISSUE_STALL:g}%: {ok(cached['stall_fraction'] < ISSUE_STALL)}); on-the-fly "
              f"{100 * fly['stall_fraction']:.2f}%",
              f"  losses, {len(fly['losses'])} steps: max |on-the-fly - cached| = {loss_diff:.3g}   (< {LOSS_TOL:g}: "
              f"{ok(loss_diff < LOSS_TOL)})"]
    if pre:
        lines += ["", "precompute (cluster.precompute.run, fresh cache folder each; samples/s of encoded samples):",
                  "| where | encoded | encode samples/s | per-worker samples/s | end-to-end s | end-to-end samples/s "
                  "| shard files | shard bytes | shards sha256 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in pre.items():
            lines.append(f"| {name} | {r['encoded']} | {r['encode_sps']:.1f} | {r['per_worker_sps']:.1f} | "
                         f"{r['end_to_end_s']:.1f} | {r['end_to_end_sps']:.1f} | {r['shard_files']} | "
                         f"{r['shard_bytes']:,} | {r['shard_sha256'][:16]} |")
        digests = {r["shard_sha256"] for r in pre.values()}
        lines.append(f"  cache shard bytes identical across {', '.join(pre)}: "
                     f"{'yes' if len(digests) == 1 else 'NO'}")
        r1, r2 = pre.get("ray, 1 worker"), pre.get("ray, 2 workers")
        if r1 and r2:
            speedup = r2["encode_sps"] / r1["encode_sps"]
            cpus = os.cpu_count() or 1
            e2e = r2["end_to_end_sps"] / r1["end_to_end_sps"]
            lines.append(f"  2 vs 1 Ray workers: {speedup:.2f}x encode throughput, {e2e:.2f}x end-to-end"
                         + (f" -- only {cpus} CPU(s) here, shared by both actors, this driver, Ray's own "
                            "processes and anything else running: expect little speedup, and numbers that vary "
                            "from run to run (the per-worker rate shows the contention)" if cpus <= 4 else ""))
        if ray_init_s is not None:
            lines.append(f"  Ray start-up (ray.init, not in any number above): {ray_init_s:.1f}s; end-to-end = plan + "
                         "actor start + encoder load + encoding; encode = first shard's start to last shard recorded")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per mode (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps (default 5)")
    ap.add_argument("--shards", type=int, default=4, help="synthetic source shards (default 4)")
    ap.add_argument("--samples-per-shard", type=int, default=16, help="samples per shard (default 16)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to precompute with (default 1,2)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray precompute runs")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    workers = [] if args.no_ray else [int(w) for w in args.workers.split(",") if w.strip()]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "bench.cache", *given])
    torch.set_num_threads(1)

    from training.config import load_config
    from training.console import quiet_third_party
    from training.data.synthetic import make_data
    from training.models import get_spec

    quiet_third_party()
    probe = load_config(TINY, [])
    d = probe.data
    out = Path(args.out or tempfile.mkdtemp(prefix="lorabench-bench-cache-")).resolve()
    model = out / "wan"
    if not (model / "model_index.json").exists():
        get_spec("wan").make_tiny(model, seed=0)
    data = out / "data"
    if not any(data.glob("*.tar")):
        make_data("video", data, shards=args.shards, samples_per_shard=args.samples_per_shard, seed=0,
                  size=(d.width, d.height), frames=d.frames)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    total = args.steps + args.warmup
    base = [f"model.path={model}", f"data.shards={data}", f"output_dir={out / 'runs'}",
            f"train.max_steps={total}", f"checkpoint.every_steps={total + 1000}", "checkpoint.save_final=false",
            "log.progress=false", "log.tensorboard=false"]

    pre: dict[str, dict[str, Any]] = {}
    print("== precompute, in this process (no Ray)", flush=True)
    local_cache = out / f"cache-{stamp}-local"
    pre["local (no Ray)"] = precompute(base, local_cache, ["parallel.backend=none"])

    print("== training on-the-fly", flush=True)
    fly = train(base, f"fly-{stamp}", [], args.warmup)
    print("== training from the cache", flush=True)
    cached = train(base, f"cached-{stamp}", [f"data.cache={local_cache}"], args.warmup)
    common = sorted(set(fly["losses"]) & set(cached["losses"]))
    if len(common) != len(fly["losses"]) or len(common) != len(cached["losses"]):
        raise SystemExit(f"the runs logged different steps: {len(fly['losses'])} vs {len(cached['losses'])}")
    loss_diff = max(abs(fly["losses"][k] - cached["losses"][k]) for k in common)

    ray_init_s = None
    if workers:
        import ray

        print("== starting Ray", flush=True)
        ray_init_s = ray_start(max(workers))
        try:
            for n in workers:
                name = f"ray, {n} worker{'s' if n > 1 else ''}"
                print(f"== precompute, {name}", flush=True)
                pre[name] = precompute(base, out / f"cache-{stamp}-ray{n}",
                                       ["parallel.backend=ray", f"parallel.num_workers={n}",
                                        "parallel.cpus_per_worker=1"])
        finally:
            ray.shutdown()

    setup = {"out": str(out), "batch": probe.train.batch_size, "frames": d.frames, "height": d.height,
             "width": d.width}
    lines = report(args, command, setup, fly, cached, loss_diff, pre, ray_init_s)
    print("\n".join(lines), flush=True)
    if args.json:
        strip = lambda r: {k: v for k, v in r.items() if k != "losses"}  # noqa: E731
        body = {"command": command, "setup": setup, "args": {k: str(v) for k, v in vars(args).items()},
                "cpus": os.cpu_count(),
                "train": {"on_the_fly": strip(fly), "cached": strip(cached),
                          "step_ratio": fly["median_step_s"] / cached["median_step_s"],
                          "max_loss_diff": loss_diff,
                          "losses": {"on_the_fly": fly["losses"], "cached": cached["losses"]}},
                "precompute": pre, "ray_init_s": ray_init_s,
                "targets": {"step_ratio": ISSUE_STEP_RATIO, "cached_stall_fraction": ISSUE_STALL,
                            "loss_diff": LOSS_TOL}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(body, indent=2, sort_keys=True))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
