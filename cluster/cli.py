"""The ``lorabench`` command: parse, build, run. Each subcommand is a typed function.

Known user errors (every training.errors.LorabenchError: bad config, missing files, a model
folder of the wrong family, bad data past the threshold, an adapter that does not apply) exit
with code 2 and one message naming the cause and the fix; ``--debug`` (anywhere on the command
line) or ``LORABENCH_DEBUG=1`` adds their traceback. Anything else propagates with its traceback.
"""

from __future__ import annotations

import argparse
import os
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from training.errors import DEBUG_FLAG, EXIT_USER_ERROR, run_entry, split_debug_flag  # noqa: F401


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import describe_fields, load_config
    from training.trainer import Trainer

    if args.help_config:
        print("\n".join(describe_fields()))
        return 0
    if not args.config:
        raise SystemExit("lorabench train: a config path is required (e.g. configs/train/tiny-wan.yaml)")
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides += ["parallel.backend=ray", f"parallel.num_workers={args.workers}"]
    cfg = load_config(args.config, overrides)
    if args.plan:
        from training.memory_plan import plan_training
        world = cfg.parallel.num_workers if cfg.parallel.backend == "ray" else int(os.environ.get("WORLD_SIZE", "1"))
        print(plan_training(cfg, world).table())
        return 0
    from training.summary import exit_code, run_summary
    if cfg.parallel.backend == "ray":
        from cluster.train import print_summary, run
        body = run(cfg)
        print_summary(body)
        return exit_code(Path(body["run_dir"]))
    run_dir = Trainer(cfg).run().run_dir
    print(run_summary(run_dir))
    return exit_code(run_dir)


def cmd_precompute(args: argparse.Namespace) -> int:
    from cluster.precompute import run, summary_text
    from training.config import load_config

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides += ["parallel.backend=ray", f"parallel.num_workers={args.workers}"]
    print(summary_text(run(load_config(args.config, overrides), verify=args.verify)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from training.generate import generate, read_prompts

    prompts = read_prompts(args.prompts)
    records = generate(args.model, prompts, args.out, seed=args.seed, adapter=args.adapter,
                       scale=args.scale, width=args.width, height=args.height, frames=args.frames,
                       steps=args.steps, guidance=args.guidance, shift=args.shift,
                       negative_prompt=args.negative_prompt, fps=args.fps, max_text_length=args.max_text_length,
                       dtype=args.dtype, vae_dtype=args.vae_dtype, text_encoder_dtype=args.text_encoder_dtype,
                       offload=args.offload, device=args.device, allow_partial=args.allow_partial,
                       allow_inconsistent=args.allow_inconsistent, long_prompts_policy=args.long_prompts)
    if records:
        st = records[0].settings
        print(f"settings: {st['width']}x{st['height']}x{st['frames']} @ {st['fps']} fps, {st['steps']} steps, "
              f"guidance {st['guidance']}, shift {st['shift']}, dtypes {st['dtypes']} "
              f"(unset values from: {st['defaults_source']})")
    for r in records:
        print(f"{r.path}  seed={r.seed}  {r.prompt!r}")
    print(f"{len(records)} samples in {args.out} (records: {Path(args.out) / 'samples.jsonl'})")
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from training.models import get_spec

    out = get_spec(args.family).make_tiny(args.out, seed=args.seed, variant=args.variant)
    print(f"tiny {args.family} ({args.variant}) model written to {out}")
    return 0


def cmd_make_tiny_metrics(args: argparse.Namespace) -> int:
    from eval.metrics.tiny import make_tiny_metrics

    paths = make_tiny_metrics(args.out, seed=args.seed)
    print("tiny RANDOM metric models (their numbers are meaningless; for tests and demos):")
    for k, p in paths.items():
        print(f"  {k:10s} {p}")
    print(f"use: metrics.clip.path={paths['clip']} metrics.fvd.i3d_path={paths['i3d']} "
          f"metrics.fid.extractor={paths['inception']}")
    return 0


def cmd_make_data(argv: list[str]) -> int:
    from training.data.synthetic import main
    return main(argv) or 0


def cmd_slurm(argv: list[str]) -> int:
    from cluster.slurm.cli import main as slurm_main
    return slurm_main(argv)


def cmd_bench(argv: list[str]) -> int:
    from cluster.bench import main as bench_main
    return bench_main(argv)


def cmd_leaderboard(argv: list[str]) -> int:
    from eval.leaderboard.cli import main as leaderboard_main
    return leaderboard_main(argv)


def cmd_adapter(argv: list[str]) -> int:
    from training.adapters.cli import main
    return main(argv)


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorabench eval", description=(
        "Generate base/adapter/checkpoint samples on fixed seeds (Ray actors) and compute metrics. "
        "Overrides are dotted key=value pairs, e.g. parallel.num_workers=4 prompts.samples_per_prompt=8. "
        "`lorabench eval metrics --from DIR [metrics.k=v ...]` recomputes metrics from saved samples "
        "and features without regenerating."))
    p.add_argument("config", nargs="?", help="eval YAML (configs/eval/*.yaml), or 'metrics'")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--from", dest="from_dir", help="with 'metrics': the eval folder (evals/<name>)")
    p.add_argument("--workers", type=int, help="Ray actors (same as parallel.num_workers=N)")
    p.add_argument("--local", action="store_true", help="generate in this process (parallel.backend=none)")
    p.add_argument("--help-config", action="store_true", help="list every eval config key with its meaning")
    return p


def cmd_eval(argv: list[str]) -> int:
    """``lorabench eval CONFIG [k=v ...]`` or ``lorabench eval metrics --from DIR [k=v ...]``."""
    p = eval_parser()
    args = p.parse_intermixed_args(argv)  # `metrics --from DIR k=v`: positionals after an option
    from eval.config import help_text, load_eval_config
    from eval.results import recompute, summary_text

    if args.help_config:
        print(help_text())
        return 0
    if args.config == "metrics":
        if not args.from_dir:
            p.error("eval metrics needs --from DIR (an eval folder with eval.json and records.jsonl)")
        body = recompute(args.from_dir, args.overrides)
    else:
        if not args.config:
            p.error("a config path is required (e.g. configs/eval/tiny-wan.yaml)")
        overrides = list(args.overrides)
        if args.workers is not None:
            overrides += ["parallel.backend=ray", f"parallel.num_workers={args.workers}"]
        if args.local:
            overrides.append("parallel.backend=none")
        from cluster.eval import run
        body = run(load_eval_config(args.config, overrides))
    print(summary_text(body))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cluster.demo import run_demo
    run_demo(Path(args.out), steps=args.steps, workers=args.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorabench", description="Train and benchmark LoRA adapters "
                                "for diffusion models (Wan video, SD3 image).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of user errors too "
                   "(also LORABENCH_DEBUG=1); accepted anywhere on the command line")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a LoRA from a YAML config",
                       description="Train a LoRA. Overrides are dotted key=value pairs, e.g. "
                       "optim.lr=1e-3 train.max_steps=20. Outputs go to <output_dir>/<run_name>/.")
    t.add_argument("config", nargs="?", help="YAML config (configs/train/*.yaml)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    t.add_argument("--help-config", action="store_true", help="list every config key with its meaning")
    t.add_argument("--workers", type=int, default=None,
                   help="train on Ray with N workers (same as parallel.backend=ray parallel.num_workers=N)")
    t.add_argument("--plan", action="store_true",
                   help="print the memory plan (bytes per component in its dtype and place, LoRA/optimizer state, "
                        "activation estimate with/without checkpointing) without loading weights, and exit")
    t.set_defaults(func=cmd_train)

    pc = sub.add_parser("precompute", help="cache VAE latents and text embeddings of a training config's data",
                        description="Encode data.shards once with the VAE and text encoders into data.cache "
                        "(content-addressed: re-running encodes only what is missing or stale); then train "
                        "with the same config and data.cache set. Uses the training config; overrides as for "
                        "train, e.g. data.cache=cache/wan parallel.num_workers=4.")
    pc.add_argument("config", help="training YAML config (configs/train/*.yaml)")
    pc.add_argument("overrides", nargs="*", help="dotted key=value overrides (data.cache=DIR is required)")
    pc.add_argument("--workers", type=int, default=None,
                    help="encode on Ray with N actors (same as parallel.backend=ray parallel.num_workers=N)")
    pc.add_argument("--verify", action="store_true",
                    help="re-hash every cached member and recompute the damaged ones (default: cheap checks only)")
    pc.set_defaults(func=cmd_precompute)

    g = sub.add_parser("generate", help="fixed-seed samples from a model (and optional adapter)")
    g.add_argument("--model", required=True, help="local diffusers folder")
    g.add_argument("--adapter", help="checkpoint folder or LoRA .safetensors (fails if it does not apply)")
    g.add_argument("--scale", type=float, default=1.0, help="adapter scale")
    g.add_argument("--prompts", required=True, help="prompts file: .txt (one per line) or .jsonl")
    g.add_argument("--seed", type=int, default=0, help="base seed; sample i uses sample_seed(seed, i)")
    g.add_argument("--out", required=True, help="output folder (sample-0000.mp4|png, samples.jsonl)")
    card = " (default: the model card's, e.g. Wan2.2-TI2V-5B 1280x704x121 @ 24 fps)"
    g.add_argument("--width", type=int, default=None, help="width" + card)
    g.add_argument("--height", type=int, default=None, help="height (default: the model card's)")
    g.add_argument("--frames", type=int, default=None, help="frames, video models (default: the model card's)")
    g.add_argument("--fps", type=int, default=None, help="frame rate written into the mp4 (default: the model's)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model card's)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the card's)")
    g.add_argument("--shift", type=float, default=None, help="scheduler flow shift (default: the card's, else "
                   "the folder's scheduler)")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (default: the model's reference one, "
                   "e.g. Wan's sample_neg_prompt; '' for none)")
    g.add_argument("--max-text-length", type=int, default=None, help="text tokens (default: the spec's)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="denoiser and text encoder dtype; auto: bf16 on a GPU, fp32 on CPU")
    g.add_argument("--vae-dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="VAE dtype (fp32, as Wan's "
                   "reference)")
    g.add_argument("--text-encoder-dtype", default=None, choices=["fp32", "bf16", "fp16"],
                   help="text encoder dtype (default: --dtype)")
    g.add_argument("--offload", action="store_true", help="diffusers model CPU offload: one component on the GPU "
                   "at a time (needs CUDA)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--long-prompts", default="error", choices=["error", "truncate", "skip"],
                   help="a prompt over the text encoder limit: refuse it (default), keep what the encoder reads "
                   "(recorded as prompt_truncated), or leave it out; the policy of training's data.long_captions")
    g.add_argument("--allow-partial", action="store_true", help="use an adapter that adapts a module type in some "
                   "blocks only (refused by default, with the coverage table)")
    g.add_argument("--allow-inconsistent", action="store_true", help="use an adapter whose adapter_config.json "
                   "disagrees with its tensors (scaled by alpha / the tensors' rank)")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("make-tiny", help="write a tiny random diffusers model folder (offline)")
    m.add_argument("--family", required=True, choices=["wan", "sd3"])
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--variant", default="t2v", choices=["t2v", "ti2v"],
                   help="wan only: Wan2.1 T2V layout or Wan2.2 TI2V-5B layout")
    m.set_defaults(func=cmd_make_tiny)

    mm = sub.add_parser("make-tiny-metrics", help="write tiny random CLIP / I3D / Inception models (offline)")
    mm.add_argument("--out", required=True, help="folder for clip/, i3d-random.pt, inception-random.pt")
    mm.add_argument("--seed", type=int, default=0)
    mm.set_defaults(func=cmd_make_tiny_metrics)

    # make-data, adapter and eval keep their own parsers; listed here for --help.
    sub.add_parser("make-data", help="write synthetic webdataset shards (moving shapes + captions)",
                   add_help=False)
    sub.add_parser("adapter", help="inspect | verify | convert LoRA adapters (any key dialect)",
                   add_help=False)
    sub.add_parser("eval", help="base vs LoRA/checkpoints on fixed seeds (Ray), FVD/CLIP/FID/KID; "
                   "'eval metrics --from DIR' recomputes", add_help=False)

    sub.add_parser("bench", help="one nightly benchmark run: train (Ray), eval base vs every checkpoint (Ray), "
                   "record, flag regressions (exit 3), render the leaderboard", add_help=False)
    sub.add_parser("leaderboard", help="add | list | show | export | render the run store", add_help=False)
    sub.add_parser("slurm", help="render | submit an sbatch script: Ray on the allocation, checkpoint-and-requeue "
                   "at the time limit (see: lorabench slurm --help)", add_help=False)
    d = sub.add_parser("demo", help="tiny end-to-end run: model, data, training, base vs LoRA samples")
    d.add_argument("--out", default="lorabench-demo", help="everything is written under this folder")
    d.add_argument("--steps", type=int, default=None, help="training steps (default from the demo config)")
    d.add_argument("--workers", type=int, default=2, help="Ray workers (DeepSpeed ZeRO-2 ranks)")
    d.set_defaults(func=cmd_demo)
    return p


def parse_command(argv: list[str]) -> tuple[Callable[[], int], bool]:
    """(runner, verbose) for a ``lorabench`` command line; parse errors exit like argparse's.

    Subcommands with their own parsers (make-data, adapter, eval, slurm, bench, leaderboard) parse
    inside the runner.
    """
    passthrough = {"make-data": cmd_make_data, "adapter": cmd_adapter, "eval": cmd_eval, "slurm": cmd_slurm,
                   "bench": cmd_bench, "leaderboard": cmd_leaderboard}
    if argv and argv[0] in passthrough:
        return (lambda: passthrough[argv[0]](argv[1:])), False
    parser = build_parser()
    # argparse stops collecting the positional overrides at the first option, so
    # `train CONFIG --workers 2 key=value` (the README's own example) would be refused:
    # dotted key=value tokens after an option are overrides too.
    args, extra = parser.parse_known_args(argv)
    stray = [t for t in extra if t.startswith("-") or "=" not in t or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return (lambda: args.func(args)), args.verbose


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = split_debug_flag(argv)  # global: the subcommands with their own parsers never see it
    runner, verbose = parse_command(argv)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        from training.console import progress_seconds, quiet_third_party
        if verbose:  # -v keeps the library output; the environment is still checked
            progress_seconds()
        else:
            quiet_third_party()
        return runner()

    return run_entry("lorabench", body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
