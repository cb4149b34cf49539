"""``lorabench demo``: the whole path on one machine in minutes, under one folder.

tiny Wan model -> synthetic moving-shape shards (train + held-out) -> LoRA training on an
embedded local Ray (2 workers, DeepSpeed ZeRO-2 over gloo) -> eval on the same Ray (2 actors):
base vs every checkpoint on the same prompts and seeds, each adapter proven applied -> metrics
(CLIP score, FVD, FID/KID, sharpness, temporal consistency) -> results.json + results.md.

The metric networks in the demo are tiny RANDOM ones (no download is possible here): their
numbers exercise the pipeline and mean nothing; results.md says so next to each value.
Re-running is idempotent: finished training steps and finished samples are skipped.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "train" / "tiny-wan.yaml"
DEMO_EVAL = REPO / "configs" / "eval" / "tiny-wan.yaml"
DEMO_DEEPSPEED = REPO / "configs" / "deepspeed" / "zero2.json"


def _read_losses(metrics: Path) -> list[float]:
    from training.fsio import read_jsonl
    return [r["loss"] for r in read_jsonl(metrics).records]


@dataclass(frozen=True)
class TinyAssets:
    """What a CPU-only run needs and no hub can provide here: a tiny random Wan model, synthetic
    moving-shape shards (training and held-out) and tiny RANDOM metric networks, under ``root``."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "tiny-models" / "wan"

    @property
    def data(self) -> Path:
        return self.root / "data" / "video"

    @property
    def heldout(self) -> Path:
        return self.root / "data" / "video-heldout"

    @property
    def metrics(self) -> Path:
        return self.root / "tiny-models" / "metrics"

    def train_overrides(self) -> list[str]:
        return [f"model.path={self.model}", f"data.shards={self.data}"]

    def eval_overrides(self) -> list[str]:
        m = self.metrics
        return [f"model.path={self.model}", f"prompts.file={REPO / 'configs/eval/prompts/shapes.txt'}",
                f"reference.shards={self.heldout}", "reference.max_samples=8",
                f"metrics.clip.path={m / 'clip'}", f"metrics.fvd.i3d_path={m / 'i3d-random.pt'}",
                f"metrics.fid.extractor={m / 'inception-random.pt'}", "metrics.fid.kid_subset_size=32",
                "metrics.fid.kid_subsets=10"]


def prepare_tiny_assets(root: Path, seed: int = 0) -> TinyAssets:
    """Build whatever of :class:`TinyAssets` is missing under ``root`` (idempotent)."""
    from eval.metrics.tiny import make_tiny_metrics
    from training.data.synthetic import make_data
    from training.models import get_spec

    a = TinyAssets(root.resolve())
    if not (a.model / "model_index.json").is_file():
        print(f"==> tiny Wan model -> {a.model}")
        get_spec("wan").make_tiny(a.model, seed=seed)
    if not any(a.data.glob("*.tar")):
        print(f"==> synthetic video shards -> {a.data}")
        make_data("video", a.data, shards=4, samples_per_shard=16, seed=seed, size=(32, 32), frames=9)
    if not any(a.heldout.glob("*.tar")):
        # Another seed: clips the LoRA never saw, for the real statistics of FVD/FID (field note 5).
        make_data("video", a.heldout, shards=1, samples_per_shard=8, seed=seed + 1000, size=(32, 32), frames=9)
    if not (a.metrics / "clip").is_dir():
        print(f"==> tiny RANDOM CLIP / I3D / Inception for the metrics -> {a.metrics}")
        make_tiny_metrics(a.metrics, seed=seed)
    return a


def run_demo(out: Path, steps: Optional[int] = None, seed: int = 0, workers: int = 2) -> dict:
    import ray

    from cluster.eval import run as eval_on_ray
    from cluster.train import connect, run as train_on_ray
    from eval.config import load_eval_config
    from eval.media import read_media
    from training.config import load_config
    from eval.leaderboard.publish import utc_now
    from training.layout import RunLayout

    t0 = time.perf_counter()
    out = out.resolve()
    assets = prepare_tiny_assets(out, seed)

    overrides = [*assets.train_overrides(), f"output_dir={out / 'runs'}",
                 "run_name=demo-wan", "train.resume=auto", "parallel.backend=ray",
                 f"parallel.num_workers={workers}", "parallel.cpus_per_worker=1",
                 f"deepspeed.config={DEMO_DEEPSPEED}"]
    if steps is not None:
        overrides.append(f"train.max_steps={steps}")
    cfg = load_config(DEMO_CONFIG, overrides)
    layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
    started = utc_now()
    info = connect(cfg.parallel)  # one Ray for both stages: train and eval see it and leave it running
    try:
        print(f"==> training LoRA for {cfg.train.max_steps} steps on local Ray ({workers} workers, DeepSpeed "
              f"ZeRO-2) -> {layout.root}")
        result = train_on_ray(cfg)
        ecfg = load_eval_config(DEMO_EVAL, [
            *assets.eval_overrides(), f"output_dir={out / 'evals'}", f"variants.adapters=[{layout.root}]",
            "prompts.samples_per_prompt=1", f"parallel.num_workers={workers}", f"seed={seed}"])
        print(f"==> eval on the same Ray ({workers} actors): base vs every checkpoint -> {ecfg.out_dir}")
        body = eval_on_ray(ecfg)
    finally:
        if info.started_here:
            ray.shutdown()

    samples = body["samples"]
    last = [v for v in body["variants"] if v != "base"][-1]
    pairs = [(b, next(s for s in samples if s["variant"] == last and s["sample_id"] == b["sample_id"]))
             for b in samples if b["variant"] == "base"]
    root = ecfg.out_dir.resolve()
    diffs = [float(np.abs(read_media(root / b["path"]).astype(np.float32) - read_media(root / lo["path"])).mean())
             for b, lo in pairs]
    if min(diffs) == 0.0:
        raise RuntimeError("a LoRA sample is identical to its base sample: the adapter had no effect")
    losses = _read_losses(layout.metrics)
    k = max(1, min(20, len(losses) // 5))
    summary = {
        "loss_first": statistics.mean(losses[:k]), "loss_last": statistics.mean(losses[-k:]),
        "loss_window_steps": k, "steps": len(losses), "variants": list(body["variants"]),
        "seeds": [b["seed"] for b, _ in pairs], "mean_abs_pixel_diff_base_vs_last": diffs,
        "results": str(root / "results.json"), "report": str(root / "results.md"),
        "seconds": round(time.perf_counter() - t0, 1), "skipped": result["skipped"], "engine": result["engine"],
        "train_seconds_in_workers": result["seconds"],
    }
    # The run goes into a leaderboard like a nightly one: store, page (with the same-seed grid).
    from eval.leaderboard.publish import publish
    from eval.leaderboard.regress import RegressionSettings
    from eval.leaderboard.store import Store
    with Store(out / "leaderboard.db") as store:
        runs = len(store.run_ids("demo"))
        pub = publish(store, run_id=f"demo-{runs + 1:03d}", bench="demo", bench_config={"demo": True},
                      started=started, train_cfg=cfg, train_dir=layout.root, eval_body=body, eval_dir=root,
                      world_size=workers, regression=RegressionSettings(), page=out / "leaderboard")
    summary["leaderboard"] = str(pub.page)
    from training.fsio import atomic_write_json
    atomic_write_json(out / "summary.json", summary)
    print(f"""
lorabench demo finished in {summary['seconds']}s (everything is under {out})
  loss (mean of first/last {k} steps): {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} over {len(losses)} steps
  training:  {result['engine']}, {result['seconds']:.1f}s in the workers; data: {result['skipped']}
  eval:      {len(samples)} samples, variants {', '.join(body['variants'])} (same prompts and seeds)
  base vs {last} mean |pixel diff| (0-255): {', '.join(f'{d:.2f}' for d in diffs)}
  report:    {root / 'results.md'}  (metric networks are tiny RANDOM ones: numbers are meaningless)
  leaderboard: {pub.page}  (open it in a browser; runs so far: {runs + 1}{', REGRESSED' if pub.regressed else ''})
  summary:   {out / 'summary.json'}""")
    return summary
