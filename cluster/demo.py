"""``lorabench demo``: the whole path on one machine in minutes, under one folder.

tiny Wan model -> synthetic moving-shape shards -> LoRA training on an embedded local Ray (2
workers, DeepSpeed ZeRO-2 over gloo) -> base and LoRA samples at the same seeds -> summary.
Re-running is idempotent: finished steps resume (train.resume=auto).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "train" / "tiny-wan.yaml"
DEMO_DEEPSPEED = REPO / "configs" / "deepspeed" / "zero2.json"
DEMO_PROMPTS = ["a red circle moving left", "a blue square moving up",
                "a yellow triangle moving right", "a green circle moving down"]


def _read_losses(metrics: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if line.strip()]


def _frames(path: str) -> np.ndarray:
    import av
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


def run_demo(out: Path, steps: Optional[int] = None, seed: int = 0, workers: int = 2) -> dict:
    from cluster.train import run as run_on_ray
    from training.config import load_config
    from training.data.synthetic import make_data
    from training.generate import generate
    from training.layout import RunLayout
    from training.models import get_spec

    t0 = time.perf_counter()
    out = out.resolve()
    model_dir, data_dir = out / "tiny-models" / "wan", out / "data" / "video"
    if not (model_dir / "model_index.json").is_file():
        print(f"==> tiny Wan model -> {model_dir}")
        get_spec("wan").make_tiny(model_dir, seed=seed)
    if not any(data_dir.glob("*.tar")):
        print(f"==> synthetic video shards -> {data_dir}")
        make_data("video", data_dir, shards=4, samples_per_shard=16, seed=seed, size=(32, 32), frames=9)

    overrides = [f"model.path={model_dir}", f"data.shards={data_dir}", f"output_dir={out / 'runs'}",
                 "run_name=demo-wan", "train.resume=auto", "parallel.backend=ray",
                 f"parallel.num_workers={workers}", "parallel.cpus_per_worker=1",
                 f"deepspeed.config={DEMO_DEEPSPEED}"]
    if steps is not None:
        overrides.append(f"train.max_steps={steps}")
    cfg = load_config(DEMO_CONFIG, overrides)
    print(f"==> training LoRA for {cfg.train.max_steps} steps on local Ray ({workers} workers, DeepSpeed "
          f"ZeRO-2) -> {out / 'runs' / 'demo-wan'}")
    layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
    result = run_on_ray(cfg)
    adapter = result["final_checkpoint"] or layout.latest_checkpoint()  # None steps left on a re-run

    prompts_file = out / "prompts.txt"
    prompts_file.write_text("\n".join(DEMO_PROMPTS) + "\n")
    shape = dict(width=cfg.data.width, height=cfg.data.height, frames=cfg.data.frames, steps=20,
                 guidance=1.0, max_text_length=cfg.data.max_text_length, seed=seed)
    print("==> base and LoRA samples at the same seeds")
    base = generate(model_dir, DEMO_PROMPTS, out / "samples" / "base", **shape)
    lora = generate(model_dir, DEMO_PROMPTS, out / "samples" / "lora", adapter=adapter, **shape)
    diffs = [float(np.abs(_frames(b.path) - _frames(l.path)).mean()) for b, l in zip(base, lora)]
    if min(diffs) == 0.0:
        raise RuntimeError("a LoRA sample is identical to its base sample: the adapter had no effect")

    losses = _read_losses(layout.metrics)
    k = max(1, min(20, len(losses) // 5))
    summary = {
        "loss_first": statistics.mean(losses[:k]), "loss_last": statistics.mean(losses[-k:]),
        "loss_window_steps": k, "steps": len(losses), "adapter": str(adapter),
        "base_samples": [b.path for b in base], "lora_samples": [l.path for l in lora],
        "seeds": [b.seed for b in base], "mean_abs_pixel_diff_base_vs_lora": diffs,
        "seconds": round(time.perf_counter() - t0, 1), "skipped": result["skipped"],
        "engine": result["engine"], "train_seconds_in_workers": result["seconds"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"""
lorabench demo finished in {summary['seconds']}s (everything is under {out})
  loss (mean of first/last {k} steps): {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} over {len(losses)} steps
  adapter:       {adapter}
  base samples:  {out / 'samples' / 'base'}  ({len(base)} mp4, seeds {summary['seeds']})
  LoRA samples:  {out / 'samples' / 'lora'}  (same prompts and seeds)
  base vs LoRA mean |pixel diff| (0-255): {', '.join(f'{d:.2f}' for d in diffs)}
  training:      {result['engine']}, {result['seconds']:.1f}s in the workers
  data: {result['skipped']}
  summary: {out / 'summary.json'}""")
    return summary
