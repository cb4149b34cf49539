"""Single-process LoRA trainer: readable top to bottom.

    validate (cheap) -> load pipeline -> inject LoRA -> [resume] -> loop -> final checkpoint

Everything family-specific goes through the model spec; logging goes through callbacks.
Randomness comes from three explicitly seeded sources, all checkpointed, so a resumed run
continues bit-exactly: the global torch RNG (LoRA dropout), one CPU generator for noise,
sigmas and VAE sampling, and the data stream position.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from . import __version__
from .callbacks import Callback, JsonlLogger, NonFiniteGuard, ProgressBar, TensorBoardLogger
from .adapters import inspect_adapter
from .checkpoint import (CheckpointError, CheckpointSpaceError, RankState, begin_checkpoint, config_hash,
                         publish_checkpoint, read_checkpoint_config, read_manifest, read_shared_state,
                         remove_temp_checkpoints, resolve_resume, space_errors, space_shortfall,
                         write_shared_state)
from .config import ConfigError, RunConfig, dump_config
from .console import muted_prints
from .data.pipeline import ShardStream, SkipCounter, batches
from .data.captions import CaptionLengthCheck
from .data.index import ShardScan, scan_shards
from .data.prefetch import Prefetched, Prefetcher
from .data.shards import list_shards, shard_assignment
from .engine import Engine, make_engine, world_from_env
from .fsio import atomic_write_text
from .layout import CKPT_CONFIG, TRAIN_STATE, RunLayout
from .lora import (PEFT_PREFIX, PEFT_WEIGHTS, inject_lora, lora_named_parameters, lora_parameters,
                   peft_config, write_adapter)
from .models import ModelSpec, get_spec
from .outputs import check_writable_dir
from .objectives import noisy_and_target, sample_sigmas, shift_sigmas
from .placement import Placement
from .precision import ComponentDtypes, dtype_census, kept_fp32_dtypes
from .runtime import Precision, apply_attention, peak_memory_bytes, resolve_attention, resolve_device
from .schedule import lr_at

log = logging.getLogger("lorabench.train")

# Config fields that must not change between a checkpoint and the run resuming from it.
_RESUME_INVARIANTS = ["seed", "model.family", "model.path", "model.mixed_precision", "model.vae_dtype",
                      "model.text_encoder_dtype", "data.fps", "lora",
                      "data.shards", "data.width", "data.height", "data.frames",
                      "data.shuffle_buffer", "train.batch_size", "train.grad_accum",
                      "train.timestep_sampling", "train.logit_mean", "train.logit_std", "optim.lr",
                      "optim.betas", "optim.eps", "optim.weight_decay", "optim.warmup_steps",
                      "optim.schedule", "optim.min_lr_ratio", "data.long_captions", "data.max_text_length"]
SHARD_INDEX = "shard_index.json"


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: dict[int, float] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0

    @property
    def final_checkpoint(self) -> Optional[Path]:
        return self.checkpoints[-1] if self.checkpoints else None


_MISSING = object()


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    """``d[a][b]`` for ``a.b``; a key an older checkpoint's config lacks reads as its default."""
    for part in dotted.split("."):
        d = d.get(part, _MISSING) if isinstance(d, dict) else _MISSING
        if d is _MISSING:
            return _default(dotted)
    return d


def _default(dotted: str) -> Any:
    model: Any = RunConfig
    *sections, leaf = dotted.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    field = model.model_fields[leaf]  # KeyError: a listed invariant that is not a config field
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def preflight(cfg: RunConfig, rank: int, world_size: int) -> tuple[ShardScan, Optional[Path]]:
    """Every check that needs no weights: geometry, shards for this world, resume target, and
    the shard scan (bad shards counted, within data.max_bad_fraction).

    Run by each rank before loading anything, and by launchers (the Ray driver) before
    starting workers, so bad data fails before Ray starts or a model loads. Returns the shard
    scan and the checkpoint to resume from.
    """
    layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
    check_writable_dir(cfg.output_dir, "output_dir")  # before minutes of model loading, not after
    check_writable_dir(layout.root, "run_name")
    geo = get_spec(cfg.model.family).geometry(cfg.model.path)
    problems = geo.check(cfg.data.width, cfg.data.height, cfg.data.frames)
    if problems:
        raise ConfigError("invalid config for model.family=%s:\n  %s" % (cfg.model.family,
                                                                           "\n  ".join(problems)))
    shards = list_shards(cfg.data.shards)
    try:  # fewer shards than ranks: say so before any model loads
        shard_assignment(shards, cfg.seed, 0, rank, world_size)
    except ValueError as e:
        raise ConfigError(f"data.shards: {e}") from None
    resume_from = resolve_resume(layout, cfg.train.resume)
    if resume_from is None and (layout.complete_checkpoints() or layout.damaged_checkpoints()):
        raise ConfigError(
            f"{layout.root} already holds checkpoints; resume with train.resume=auto, or "
            f"choose another run_name (nothing is overwritten)")
    if resume_from is not None:
        _check_resume_config(cfg, resume_from)
    # Per-shard sample counts (balanced epochs) and bad shards, cached in the run folder: the
    # driver's scan makes the ranks' scans cache hits.
    layout.root.mkdir(parents=True, exist_ok=True)
    scan = scan_shards(shards, cache=layout.root / SHARD_INDEX)
    scan.check(cfg.data.max_bad_fraction, world_size)
    return scan, resume_from


def _check_resume_config(cfg: RunConfig, ckpt: Path) -> None:
    old = read_checkpoint_config(ckpt)  # checked against the manifest's sha256: one-line errors
    new = cfg.to_dict()
    changed = [k for k in _RESUME_INVARIANTS if _lookup(old, k) != _lookup(new, k)]
    if changed:
        details = "; ".join(f"{k}: {_lookup(old, k)!r} -> {_lookup(new, k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume from {ckpt}: settings changed since it was saved "
                              f"({details}); resume with the checkpoint's config.yaml")


class Trainer:
    """The one training loop: a single process, a torchrun/accelerate rank, or a Ray worker.

    Everything distributed goes through ``self.engine`` (see training.engine); the rank and
    world size come from the launcher's environment.
    """

    def __init__(self, cfg: RunConfig, callbacks: Optional[list[Callback]] = None) -> None:
        self.cfg = cfg
        self.layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
        self.spec: ModelSpec = get_spec(cfg.model.family)
        self.rank, _, self.world_size = world_from_env()
        self.device = resolve_device(cfg.train.device)
        self.precision = Precision.resolve(cfg.model.mixed_precision, self.device)
        self.attention = resolve_attention(cfg.model.attention, self.device)
        self.step = 0
        self.engine: Optional[Engine] = None
        self.callbacks = callbacks if callbacks is not None else self._default_callbacks()
        self._validate()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _default_callbacks(self) -> list[Callback]:
        if not self.is_main:  # logs, events and the progress bar come from rank 0 only
            return [NonFiniteGuard()]
        cbs: list[Callback] = [NonFiniteGuard(), JsonlLogger(self.cfg.log.every_steps)]
        if self.cfg.log.tensorboard:
            cbs.append(TensorBoardLogger(self.cfg.log.every_steps))
        if self.cfg.log.progress:
            cbs.append(ProgressBar())
        return cbs

    # ------------------------------------------------------------------ validation (no weights)

    def _validate(self) -> None:
        self.scan, self.resume_from = preflight(self.cfg, self.rank, self.world_size)
        self.shards = self.scan.usable  # the resume digest covers the usable list

    # ------------------------------------------------------------------ setup (heavy)

    def _setup(self) -> None:
        cfg = self.cfg
        # Per-rank streams of randomness (LoRA dropout, noise); rank 0 keeps the 1-process seeds.
        torch.manual_seed(cfg.seed + self.rank)
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        self.memory_plan = None
        if self.is_main:
            # Before the engine: once accelerate registers a ZeRO-3 config, even a meta-device
            # build of a transformers model would go through deepspeed.zero.Init.
            from .memory_plan import plan_training
            self.memory_plan = plan_training(cfg, self.world_size)
            log.info("memory plan (before loading any weights):\n%s", self.memory_plan.table())
        # DeepSpeed prints "... built successfully" from every rank while accelerate sets up its comm.
        with muted_prints():
            self.engine = make_engine(cfg, self.device, self.precision)
        self.device, self.precision = self.engine.device, self.engine.precision
        log.info("engine: %s", self.engine.description)
        self.dtypes = ComponentDtypes.from_model_config(cfg.model)
        with self.engine.model_loading():
            self.pipe = self.spec.load_pipeline(cfg.model.path, dtype=self.dtypes)
        self.pipe.set_progress_bar_config(disable=True)
        self.placement = Placement.for_pipeline(self.pipe, self.device, cfg.model.offload_encoders)
        for name, module in self.pipe.components.items():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        self.model = self.pipe.transformer
        targets = cfg.lora.target_modules or self.spec.default_lora_targets
        self.lora_cfg = peft_config(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, targets)
        init_seed = cfg.lora.init_seed if cfg.lora.init_seed is not None else cfg.seed
        self.adapted = inject_lora(self.model, self.lora_cfg, seed=init_seed)
        self.model.train()
        if cfg.model.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        apply_attention(self.model, self.attention)
        self.params = lora_parameters(self.model)
        o = cfg.optim
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      weight_decay=o.weight_decay)
        self.forward_model = self.engine.prepare(self.model, self.params, optimizer)
        kept = kept_fp32_dtypes(self.model)
        self.param_dtypes = {**dtype_census(self.model),
                             "kept_fp32_modules": sorted(set(kept.values()))}
        if any(d != "fp32" for d in kept.values()):
            # An engine that casts the whole module (DeepSpeed's bf16/fp16 modes) computes
            # differently from the single-process run: say so, never silently.
            log.warning("modules diffusers keeps in fp32 are not fp32 under %s: %s",
                        self.engine.description, sorted(set(kept.values())))
        self.generator = torch.Generator().manual_seed(cfg.seed + 1 + 1_000_003 * self.rank)
        self.counter = SkipCounter()
        # Balanced epochs: every rank yields the same number of samples per epoch whatever the
        # shard sizes (see data.pipeline), from the per-shard counts of the preflight scan; bad
        # shards (truncated, empty, unreadable) are counted and left out.
        scan = self.scan
        self.counter.record_shards(len(scan.shards), [(b.shard, b.reason) for b in scan.bad])
        counts = scan.counts
        self.max_text = cfg.data.max_text_length or self.spec.default_max_text_length
        captions = CaptionLengthCheck.for_pipeline(self.pipe, self.spec.text_limits(self.max_text),
                                                   cfg.data.long_captions)
        self.stream = ShardStream(self.shards, modality=self.spec.modality, frames=cfg.data.frames,
                                  height=cfg.data.height, width=cfg.data.width, seed=cfg.seed,
                                  rank=self.rank, world_size=self.world_size,
                                  shuffle_buffer=cfg.data.shuffle_buffer, counter=self.counter,
                                  sample_counts=counts, batch_size=cfg.train.batch_size, fps=cfg.data.fps,
                                  caption_check=captions)
        self.shift = self.spec.flow_shift(self.pipe)
        self.num_timesteps = self.spec.num_train_timesteps(self.pipe)
        tr_config = Path(cfg.model.path) / "transformer" / "config.json"
        self.transformer_config_sha256 = config_hash(tr_config)
        self.transformer_config = {k: v for k, v in json.loads(tr_config.read_text()).items()
                                   if not k.startswith("_")}

    def _named_lora(self) -> list[tuple[str, torch.nn.Parameter]]:
        return lora_named_parameters(self.model)

    def _restore(self, ckpt: Path) -> None:
        read_manifest(ckpt, verify=True)
        folder = ckpt / TRAIN_STATE
        shared = read_shared_state(folder)
        if (shared.get("world_size"), shared.get("engine")) != (self.world_size, self.engine.kind):
            raise CheckpointError(
                f"cannot resume from {ckpt}: it was written by {shared.get('world_size')} rank(s) with the "
                f"{shared.get('engine')} engine, this run has {self.world_size} with {self.engine.kind}. Exact "
                f"resume needs the same parallel.num_workers and deepspeed settings.")
        # data.shards may name a directory whose contents changed: the position would then
        # point into different data. Compare the resolved list, not the config string.
        extra = shared.get("extra", {})
        if extra.get("shards_sha256") not in (None, self._shards_digest()):
            raise CheckpointError(
                f"cannot resume from {ckpt}: the resolved shard list changed ({extra.get('num_shards')} "
                f"shards then, {len(self.shards)} now); restore the original shards or start a new run")
        saved = {k[len(PEFT_PREFIX):]: v for k, v in load_file(str(ckpt / PEFT_WEIGHTS)).items()}
        if self.engine.kind == "local":
            result = set_peft_model_state_dict(self.model, saved, adapter_name="default")
            if [k for k in result.missing_keys if "lora_" in k] or result.unexpected_keys:
                raise CheckpointError(f"{ckpt / PEFT_WEIGHTS} does not match the model's LoRA layout")
        self.engine.load_optimizer(folder)  # DeepSpeed restores its module and fp32 masters here
        # Never trust a load that reports success: the live adapter must equal the file
        # (a resume that silently kept the fresh LoRA is a known failure of the field).
        live = self.engine.adapter_state(self._named_lora)
        differ = sorted(set(live) ^ set(saved)) or [k for k in saved if not torch.equal(live[k], saved[k])]
        if differ:
            raise CheckpointError(f"resuming from {ckpt} did not restore the adapter: {len(differ)} "
                                  f"tensor(s) differ from {ckpt / PEFT_WEIGHTS}, e.g. {differ[:3]}")
        rs = RankState.read(folder, self.rank)
        torch.set_rng_state(rs.rng["torch_cpu"])
        self.generator.set_state(rs.rng["noise"])
        if self.device.type == "cuda" and "cuda" in rs.rng:
            torch.cuda.set_rng_state(rs.rng["cuda"], self.device)
        self.stream.load_state_dict(rs.data)
        self.counter.load_state_dict(rs.skips)
        self.step = shared["step"]
        log.info("resumed from %s at step %d", ckpt, self.step)

    # ------------------------------------------------------------------ one optimizer step

    def _micro_step(self, batch: dict[str, Any]) -> torch.Tensor:
        pixels = batch["pixels"].to(self.device)
        with torch.no_grad():
            with self.placement.use("vae"):
                latents = self.spec.encode_pixels(self.pipe, pixels, self.generator).float()
            with self.placement.use(*self.placement.text_encoders):
                cond = self.spec.encode_text(self.pipe, batch["captions"], self.device, self.max_text)
        b = latents.shape[0]
        t = self.cfg.train
        # Noise and sigmas drawn on CPU from our generator: identical on any device and resumable.
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        sigmas = shift_sigmas(sample_sigmas(b, self.generator, t.timestep_sampling, t.logit_mean,
                                            t.logit_std), self.shift).to(self.device)
        noisy, target = noisy_and_target(latents, noise, sigmas)
        with self.precision.autocast():
            pred = self.spec.predict(self.pipe, self.forward_model, noisy.to(self.precision.dtype),
                                     sigmas * self.num_timesteps, cond)
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def _batches(self):
        """Batches with the data state as of each one (see data.prefetch)."""
        def snapshot() -> tuple[dict, dict]:
            return copy.deepcopy(self.stream.state_dict()), copy.deepcopy(self.counter.state_dict())

        source = batches(iter(self.stream), self.cfg.train.batch_size)
        if self.cfg.data.prefetch:
            return Prefetcher(source, snapshot, depth=self.cfg.data.prefetch)
        return (Prefetched(b, *snapshot()) for b in source)

    def _consumed_skips(self) -> SkipCounter:
        counter = SkipCounter()
        counter.load_state_dict(self._consumed[1])
        return counter

    def _optimizer_step(self, batch_iter) -> dict[str, float]:
        cfg = self.cfg
        lr = lr_at(self.step, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                   max_steps=cfg.train.max_steps, schedule=cfg.optim.schedule,
                   min_lr_ratio=cfg.optim.min_lr_ratio)
        self.engine.set_lr(lr)
        start = time.perf_counter()
        total = 0.0
        for i in range(cfg.train.grad_accum):
            item = next(batch_iter)
            self._consumed = (item.data_state, item.skip_state)
            loss = self._micro_step(item.batch)
            self.engine.backward(loss, last_micro_batch=i == cfg.train.grad_accum - 1)
            total += loss.item()
        grad_norm = self.engine.step()
        skips = self._consumed_skips()
        skips.check(cfg.data.max_bad_fraction)
        self.step += 1
        loss = self.engine.mean(total / cfg.train.grad_accum)  # also keeps ranks in lock-step
        seconds = time.perf_counter() - start
        samples = cfg.train.batch_size * cfg.train.grad_accum * self.world_size
        metrics = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                   "step_seconds": seconds, "samples_per_s": samples / seconds,
                   **skips.report()}  # skipped_samples, skips_by_reason, kept_by_reason, bad_shards...
        if self.step % cfg.log.every_steps == 0 or self.step == cfg.train.max_steps:
            peaks = self.engine.gather_object(peak_memory_bytes(self.device))
            metrics["peak_memory_bytes"] = max(peaks)
            if self.world_size > 1:
                metrics.update({f"peak_memory_bytes_rank{r}": b for r, b in enumerate(peaks)})
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def _shards_digest(self) -> str:
        return hashlib.sha256("\n".join(self.shards).encode()).hexdigest()

    def _manifest(self) -> dict[str, Any]:
        import diffusers
        import peft
        cfg = self.cfg
        return {
            "lorabench_version": __version__,
            "base_model": {"family": cfg.model.family, "path": str(Path(cfg.model.path).resolve()),
                           "folder_name": Path(cfg.model.path).resolve().name,
                           "revision": cfg.model.revision,
                           "transformer_config_sha256": self.transformer_config_sha256,
                           # kept whole (it is small) so a mismatch can be shown field by field
                           "transformer_config": self.transformer_config},
            "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
                     "target_modules": sorted(self.lora_cfg.target_modules),
                     "adapted_modules": len(self.adapted)},
            "data": {"width": cfg.data.width, "height": cfg.data.height, "frames": cfg.data.frames,
                     "fps": cfg.data.fps},
            "mixed_precision": cfg.model.mixed_precision,
            "component_dtypes": self.dtypes.to_dict(),
            "libraries": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "peft": peft.__version__},
        }

    def _rank_state(self) -> RankState:
        rng = {"torch_cpu": torch.get_rng_state(), "noise": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return RankState(rng=rng, data=self._consumed[0], skips=self._consumed[1])

    def save(self) -> Path:
        """Write checkpoint ``self.step``: a collective, every rank calls it.

        Every rank writes its own RNG/data state (and, under DeepSpeed, its optimizer
        partition) into one temporary folder; rank 0 then writes the adapter, hashes
        everything into the manifest and publishes the folder with one rename.
        """
        engine = self.engine
        refusal = None
        if self.is_main:  # no save is in flight: drop temp folders of failed saves, then check space
            remove_temp_checkpoints(self.layout)
            refusal = space_shortfall(self.layout, self.step)
        token, refusal = engine.broadcast_object((uuid.uuid4().hex[:8], refusal))
        if refusal is not None:  # every rank stops before anything is written
            raise CheckpointSpaceError(refusal)
        tmp = self.layout.temp_checkpoint(self.step, token)
        # A lone rank removes the temp folder when a write fails; with more ranks another may
        # still be writing into it, and the next save removes it.
        with space_errors(self.layout, self.step, tmp, cleanup=self.world_size == 1):
            if self.is_main:
                (begin_checkpoint(self.layout, self.step, token) / TRAIN_STATE).mkdir()
            engine.barrier()
            engine.save_optimizer(tmp / TRAIN_STATE)
            self._rank_state().write(tmp / TRAIN_STATE, self.rank)
        state = engine.adapter_state(self._named_lora)  # gathered fp32 masters (ZeRO-3: collective)
        self._maybe_crash("during_save")
        engine.barrier()
        error: Optional[BaseException] = None
        path = self.layout.checkpoint(self.step)
        if self.is_main:
            try:
                with space_errors(self.layout, self.step, tmp):  # every rank is done writing into tmp
                    path = self._publish(tmp, state)
            except BaseException as e:  # the other ranks must hear about it, not hang
                error = e
        message = engine.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointError(f"rank 0 failed to save checkpoint {path}: {message}")
        return path

    def _publish(self, tmp: Path, state: dict[str, torch.Tensor]) -> Path:
        if not state or any(t.numel() == 0 for t in state.values()):
            raise CheckpointError("the adapter state is empty (ZeRO-3 partitions not gathered?): "
                                  "refusing to write a checkpoint without the trained weights")
        write_adapter(tmp, state, self.lora_cfg, self.cfg.model.path)
        (tmp / CKPT_CONFIG).write_text(dump_config(self.cfg))
        write_shared_state(tmp / TRAIN_STATE, self.step, self.world_size, self.engine.kind,
                           {"shards_sha256": self._shards_digest(), "num_shards": len(self.shards)})
        path = publish_checkpoint(self.layout, self.step, tmp, self._manifest(),
                                  keep_last=self.cfg.checkpoint.keep_last)
        # A bad save must be caught now, not at eval time: re-read and compare every tensor.
        saved = load_file(str(path / PEFT_WEIGHTS))
        if set(saved) != {PEFT_PREFIX + k for k in state} or any(
                not torch.equal(saved[PEFT_PREFIX + k], v) for k, v in state.items()):
            raise CheckpointError(f"{path / PEFT_WEIGHTS} does not hold the trained adapter")
        # And it must load back onto this architecture with full coverage through the same
        # loader eval uses (names and shapes only, no forward): a bad save fails at this step.
        report = inspect_adapter(path, self.model)
        if not report.ok or len(report.matched) != len(self.adapted):
            raise CheckpointError(f"{path} does not reload with full coverage "
                                  f"({len(report.matched)} of {len(self.adapted)} modules):\n"
                                  f"{report.to_table()}")
        return path

    def _maybe_crash(self, point: str) -> None:
        """Fault injection (debug.crash_at_step): SIGKILL this process once, as a node loss would."""
        d = self.cfg.debug
        if d.crash_at_step != self.step or d.crash_point != point or d.crash_rank != self.rank:
            return
        marker = self.layout.root / f".crash-injected-step-{self.step}"
        if marker.exists():  # already crashed here once: the restarted run goes on
            return
        marker.write_text(f"rank {self.rank} killed at step {self.step} ({point})\n")
        log.warning("debug.crash_at_step=%d: killing rank %d (pid %d) %s", self.step, self.rank,
                    os.getpid(), point.replace("_", " "))
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ main loop

    def run(self) -> TrainResult:
        start = time.perf_counter()
        self._setup()  # creates the run folder
        if self.is_main:
            atomic_write_text(self.layout.config, dump_config(self.cfg))
        if self.resume_from is not None:
            self._restore(self.resume_from)
        result = TrainResult(run_dir=self.layout.root, steps=self.step)
        for cb in self.callbacks:
            cb.on_start(self)
        self._consumed = (copy.deepcopy(self.stream.state_dict()), copy.deepcopy(self.counter.state_dict()))
        batch_iter = self._batches()
        try:
            ck = self.cfg.checkpoint
            while self.step < self.cfg.train.max_steps:
                metrics = self._optimizer_step(batch_iter)
                result.losses[self.step] = metrics["loss"]
                for cb in self.callbacks:
                    cb.on_step(self, metrics)
                self._maybe_crash("after_step")
                if self.step % ck.every_steps == 0 or (ck.save_final and self.step == self.cfg.train.max_steps):
                    result.checkpoints.append(self.save())
            self._consumed_skips().check(self.cfg.data.max_bad_fraction, final=True)
        finally:
            if isinstance(batch_iter, Prefetcher):
                batch_iter.close()
            for cb in self.callbacks:
                cb.on_end(self)
        # Bytes of params/grads/optimizer state per rank: what ZeRO stages trade (bench/distributed).
        self.memory_per_rank = self.engine.gather_object(self.engine.memory_report())
        result.steps = self.step
        result.skipped = self._consumed_skips().summary()
        result.seconds = time.perf_counter() - start
        log.info("%s", result.skipped)
        if self.is_main:
            self._write_result(result)
        self.engine.barrier()
        return result

    def _write_result(self, result: TrainResult) -> None:
        """result.json in the run folder: what a driver (Ray, SLURM) reports when the job ends."""
        final = result.final_checkpoint or self.layout.latest_checkpoint()
        body = {"steps": result.steps, "seconds": round(result.seconds, 3), "skipped": result.skipped,
                "world_size": self.world_size, "engine": self.engine.description,
                "final_checkpoint": str(final) if final else None,
                "memory_per_rank": self.memory_per_rank,
                "component_dtypes": self.dtypes.to_dict(), "param_dtypes": self.param_dtypes,
                "memory_plan": self.memory_plan.to_dict() if self.memory_plan else None,
                **self._consumed_skips().report(examples=True),
                "losses": {str(k): v for k, v in result.losses.items()}}
        atomic_write_text(self.layout.result, json.dumps(body, indent=2))
