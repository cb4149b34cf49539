"""Trainer overhead: lorabench's Trainer vs a minimal hand-written peft + torch loop.

Same tiny Wan model, same LoRA (rank, targets), same batch size, same shards, one process, one
torch thread, measured in one run:

  A  lorabench Trainer        tar read + decode + VAE/text encode + fwd/bwd/step + logging
  B  hand loop                the same decoded batches held in memory + VAE/text encode + fwd/bwd/step
  C  hand loop, cached        latents and text embeddings precomputed: fwd/bwd/step only

A/B is the cost of everything the trainer adds (data pipeline, bookkeeping, metrics);
B/C is what encoding costs each step (what a precompute stage would save).

    python -m bench.train_overhead [--steps 60] [--warmup 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def _hand_loop(model_dir: Path, batches: list[dict], steps: int, warmup: int, cached: bool,
               rank: int, targets: list[str], lr: float) -> float:
    """The loop a practitioner writes by hand; returns steps/s after warm-up."""
    from diffusers import WanPipeline
    from peft import LoraConfig

    pipe = WanPipeline.from_pretrained(str(model_dir))
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    tr = pipe.transformer
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    params = [p for n, p in tr.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)

    def encode(b):
        with torch.no_grad():
            z = (pipe.vae.encode(b["pixels"]).latent_dist.sample(generator=g) - mean) / std
            e, _ = pipe.encode_prompt(b["captions"], do_classifier_free_guidance=False,
                                      max_sequence_length=32)
        return z, e

    cache = [encode(b) for b in batches] if cached else None
    times = []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        i = step % len(batches)
        z, e = cache[i] if cached else encode(batches[i])
        noise = torch.randn(z.shape, generator=g)
        s = torch.sigmoid(torch.randn(z.shape[0], generator=g))
        s = 3.0 * s / (1 + 2.0 * s)
        sv = s.view(-1, 1, 1, 1, 1)
        pred = tr(hidden_states=(1 - sv) * z + sv * noise, timestep=s * 1000, encoder_hidden_states=e,
                  return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - z)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return len(times) / sum(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from training.config import load_config
    from training.data.index import shard_sample_counts
    from training.data.pipeline import ShardStream, batches as make_batches
    from training.data.shards import list_shards
    from training.data.synthetic import make_data
    from training.models import get_spec
    from training.trainer import Trainer

    work = args.workdir or Path(tempfile.mkdtemp(prefix="lorabench-bench-"))
    model_dir, data_dir = work / "wan", work / "data"
    if not (model_dir / "model_index.json").exists():
        get_spec("wan").make_tiny(model_dir, seed=0)
    if not any(data_dir.glob("*.tar")):
        make_data("video", data_dir, shards=4, samples_per_shard=16, seed=0, size=(32, 32), frames=9)

    total = args.steps + args.warmup
    cfg = load_config(REPO / "configs/train/tiny-wan.yaml", [
        f"model.path={model_dir}", f"data.shards={data_dir}", f"output_dir={work / 'runs'}",
        f"run_name=bench-{int(time.time())}", f"train.max_steps={total}", "checkpoint.every_steps=100000",
        "checkpoint.save_final=false", "log.progress=false", "log.tensorboard=false"])
    result = Trainer(cfg).run()
    recs = [json.loads(line) for line in
            (work / "runs" / cfg.run_name / "logs/metrics.jsonl").read_text().splitlines()]
    a = len(recs[args.warmup:]) / sum(r["step_seconds"] for r in recs[args.warmup:])

    # The same batches, decoded once up front by the same stream (balanced epochs, as in the trainer).
    shards = list_shards(str(data_dir))
    stream = iter(ShardStream(shards, modality="video", frames=9, height=32, width=32, seed=0,
                              shuffle_buffer=cfg.data.shuffle_buffer, sample_counts=shard_sample_counts(shards),
                              batch_size=cfg.train.batch_size))
    held = [b for b, _ in zip(make_batches(stream, cfg.train.batch_size), range(16))]
    targets, rank, lr = cfg.lora.target_modules, cfg.lora.rank, cfg.optim.lr
    b = _hand_loop(model_dir, held, args.steps, args.warmup, cached=False, rank=rank, targets=targets, lr=lr)
    c = _hand_loop(model_dir, held, args.steps, args.warmup, cached=True, rank=rank, targets=targets, lr=lr)

    print(f"\ntiny Wan, LoRA r={rank} on {len(targets)} module types, batch {cfg.train.batch_size} x "
          f"9x32x32, {args.steps} timed steps after {args.warmup} warm-up, 1 torch thread")
    print(f"  A lorabench Trainer (full pipeline)        {a:7.2f} steps/s")
    print(f"  B hand loop, decoded batches in memory     {b:7.2f} steps/s")
    print(f"  C hand loop, cached latents + embeddings   {c:7.2f} steps/s")
    print(f"  A/B = {a / b:.3f}  (trainer speed relative to the minimal loop doing the same work)")
    print(f"  B/C = {b / c:.3f}  (share of time left after encoding each step)")
    print(f"  loss {statistics.mean(list(result.losses.values())[:10]):.4f} -> "
          f"{statistics.mean(list(result.losses.values())[-10:]):.4f}; workdir {work}")


if __name__ == "__main__":
    main()
