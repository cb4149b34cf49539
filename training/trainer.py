"""Single-process LoRA trainer, read top to bottom: setup, loop, teardown.

    preflight (cheap, no weights) -> load pipeline -> inject LoRA -> [restore] -> loop -> result

Everything family-specific goes through the model spec, everything distributed through the
engine (training.engines), checkpoints through the checkpoint manager (training.checkpointing),
logging through callbacks. Randomness comes from three explicitly seeded sources, all
checkpointed, so a resumed run continues bit-exactly: the global torch RNG (LoRA dropout), one
CPU generator for noise, sigmas and VAE sampling, and the data stream position.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .cache.source import CachedSource
from .callbacks import Callback, default_callbacks
from .checkpointing import CheckpointManager, DataPosition
from .config import RunConfig, dump_config
from .console import muted_prints
from .data.captions import CaptionLengthCheck
from .data.pipeline import ShardStream, SkipCounter, batches
from .data.prefetch import Prefetched, Prefetcher
from .engines import Engine, EngineSettings, make_engine, world_from_env
from .faults import maybe_crash
from .fsio import atomic_write_text
from .layout import RunLayout
from .lora import inject_lora, lora_parameters, peft_config
from .models import Conditions, ModelSpec, get_spec
from .objectives import noisy_and_target, sample_sigmas, shift_sigmas
from .placement import Placement
from .precision import ComponentDtypes, dtype_census, kept_fp32_dtypes
from .preflight import preflight
from .runtime import (Precision, apply_attention, device_name, peak_memory_bytes, resolve_attention,
                      resolve_device)
from .schedule import lr_at
from .stopping import StopRequests
from .summary import TrainResult, write_result

log = logging.getLogger("lorabench.train")


class Trainer:
    """The one training loop: a single process, a torchrun/accelerate rank, or a Ray worker.

    The rank and world size come from the launcher's environment. Construction runs the
    preflight (no weights); ``run`` does the heavy setup, the loop and the teardown.
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
        self.memory_plan = None
        self.callbacks = callbacks if callbacks is not None else default_callbacks(cfg.log, self.is_main)
        self.scan, self.resume_from = preflight(cfg, self.rank, self.world_size)
        self.shards = self.scan.usable  # the resume digest covers the usable list

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ setup (heavy)

    def _setup(self) -> None:
        cfg = self.cfg
        # Per-rank streams of randomness (LoRA dropout, noise); rank 0 keeps the 1-process seeds.
        torch.manual_seed(cfg.seed + self.rank)
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        if self.is_main:
            # Before the engine: once accelerate registers a ZeRO-3 config, even a meta-device
            # build of a transformers model would go through deepspeed.zero.Init.
            from .memory_plan import plan_training
            self.memory_plan = plan_training(cfg, self.world_size)
            log.info("memory plan (before loading any weights):\n%s", self.memory_plan.table())
        # DeepSpeed prints "... built successfully" from every rank while accelerate sets up its comm.
        with muted_prints():
            self.engine = make_engine(EngineSettings.from_run_config(cfg), self.device, self.precision)
        self.device, self.precision = self.engine.device, self.engine.precision
        log.info("engine: %s", self.engine.description)
        self._load_model()
        self._prepare_training()
        self._build_data()
        self.checkpoints = CheckpointManager(
            cfg, self.layout, self.engine, model=self.model, lora_cfg=self.lora_cfg,
            adapted_modules=len(self.adapted), dtypes=self.dtypes, shards=self.shards,
            generator=self.generator)

    def _load_model(self) -> None:
        """The pipeline, frozen, with the LoRA injected into its transformer."""
        cfg = self.cfg
        self.dtypes = ComponentDtypes.from_model_config(cfg.model)
        # From a latent cache the VAE and text encoders are never loaded (their output is cached).
        without = self.spec.encoder_components(cfg.model.path) if cfg.data.cache else ()
        with self.engine.model_loading():
            self.pipe = self.spec.load_pipeline(cfg.model.path, dtype=self.dtypes, without=without)
        self.pipe.set_progress_bar_config(disable=True)
        self.placement = Placement.for_pipeline(self.pipe, self.device, cfg.model.offload_encoders)
        for module in self.pipe.components.values():
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

    def _prepare_training(self) -> None:
        """Optimizer over the LoRA parameters, handed to the engine with the model."""
        o = self.cfg.optim
        self.params = lora_parameters(self.model)
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      weight_decay=o.weight_decay)
        self.forward_model = self.engine.prepare(self.model, self.params, optimizer)
        kept = kept_fp32_dtypes(self.model)
        self.param_dtypes = {**dtype_census(self.model), "kept_fp32_modules": sorted(set(kept.values()))}
        if any(d != "fp32" for d in kept.values()):
            # An engine that casts the whole module (DeepSpeed's bf16/fp16 modes) computes
            # differently from the single-process run: say so, never silently.
            log.warning("modules diffusers keeps in fp32 are not fp32 under %s: %s",
                        self.engine.description, sorted(set(kept.values())))

    def _build_data(self) -> None:
        """This rank's sample stream and the noise generator."""
        cfg = self.cfg
        self.generator = torch.Generator().manual_seed(cfg.seed + 1 + 1_000_003 * self.rank)
        self.counter = SkipCounter()
        # Balanced epochs: every rank yields the same number of samples per epoch whatever the
        # shard sizes (see data.pipeline), from the per-shard counts of the preflight scan; bad
        # shards (truncated, empty, unreadable) are counted and left out.
        self.counter.record_shards(len(self.scan.shards), [(b.shard, b.reason) for b in self.scan.bad])
        self.max_text = cfg.data.max_text_length or self.spec.default_max_text_length
        self.vae_config = json.loads((Path(cfg.model.path) / "vae" / "config.json").read_text())
        if cfg.data.cache:  # cached posteriors and conditions, the same shards, order and skips
            cached = CachedSource.for_run(cfg, self.scan.counts)
            source = {"caption_check": None, "decoder": cached, "open_shard": cached.open_shard}
        else:
            source = {"caption_check": CaptionLengthCheck.for_pipeline(
                self.pipe, self.spec.text_limits(self.max_text), cfg.data.long_captions)}
        self.stream = ShardStream(self.shards, modality=self.spec.modality, frames=cfg.data.frames,
                                  height=cfg.data.height, width=cfg.data.width, seed=cfg.seed,
                                  rank=self.rank, world_size=self.world_size,
                                  shuffle_buffer=cfg.data.shuffle_buffer, counter=self.counter,
                                  sample_counts=self.scan.counts, batch_size=cfg.train.batch_size,
                                  fps=cfg.data.fps, **source)
        self.shift = self.spec.flow_shift(self.pipe)
        self.num_timesteps = self.spec.num_train_timesteps(self.pipe)

    # ------------------------------------------------------------------ one optimizer step

    @torch.no_grad()
    def _encode(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Conditions]:
        """Latents and text conditions of a batch: encoded now, or read from the latent cache."""
        if "posterior" in batch:
            posterior = {k: v.to(self.device) for k, v in batch["posterior"].items()}
            latents = self.spec.latents_from_posterior(self.vae_config, posterior, self.generator)
            return latents.float(), Conditions(batch["cond"]).to(self.device)
        with self.placement.use("vae"):
            latents = self.spec.encode_pixels(self.pipe, batch["pixels"].to(self.device), self.generator)
        with self.placement.use(*self.placement.text_encoders):
            return latents.float(), self.spec.encode_text(self.pipe, batch["captions"], self.device, self.max_text)

    def _micro_step(self, batch: dict[str, Any]) -> torch.Tensor:
        latents, cond = self._encode(batch)
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

    def _snapshot(self) -> tuple[dict, dict]:
        """Stream state and skip counts now (copied: the stream goes on mutating them)."""
        return copy.deepcopy(self.stream.state_dict()), copy.deepcopy(self.counter.state_dict())

    def _batches(self) -> Iterator[Prefetched]:
        """Batches, each with the data position as of itself (a prefetcher runs ahead)."""
        source = batches(iter(self.stream), self.cfg.train.batch_size)
        if self.cfg.data.prefetch:
            return Prefetcher(source, self._snapshot, depth=self.cfg.data.prefetch)
        return (Prefetched(b, *self._snapshot()) for b in source)

    def _optimizer_step(self, batch_iter: Iterator[Prefetched]) -> tuple[dict[str, Any], DataPosition]:
        """One update over grad_accum micro-batches; returns its metrics and the data position
        after the last batch it consumed (what a checkpoint at this step records)."""
        cfg = self.cfg
        lr = lr_at(self.step, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps,
                   max_steps=cfg.train.max_steps, schedule=cfg.optim.schedule,
                   min_lr_ratio=cfg.optim.min_lr_ratio)
        self.engine.set_lr(lr)
        start = time.perf_counter()
        total = 0.0
        for i in range(cfg.train.grad_accum):
            item = next(batch_iter)
            position = DataPosition(item.data_state, item.skip_state)
            loss = self._micro_step(item.batch)
            self.engine.backward(loss, last_micro_batch=i == cfg.train.grad_accum - 1)
            total += loss.item()
        grad_norm = self.engine.step()
        skips = position.skip_counter()
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
        return metrics, position

    # ------------------------------------------------------------------ the run

    def run(self) -> TrainResult:
        start = time.perf_counter()
        self._setup()  # creates the run folder
        try:
            result = self._loop()
            # Bytes of params/grads/optimizer state per rank: what ZeRO stages trade (bench/distributed).
            self.memory_per_rank = self.engine.gather_object(self.engine.memory_report())
            result.seconds = time.perf_counter() - start
            log.info("%s", result.skipped)
            if self.is_main:
                write_result(self.layout, result, world_size=self.world_size, engine=self.engine.description,
                             device_name=device_name(self.device),
                             memory_per_rank=self.memory_per_rank, component_dtypes=self.dtypes.to_dict(),
                             param_dtypes=self.param_dtypes,
                             memory_plan=self.memory_plan.to_dict() if self.memory_plan else None,
                             **self.position.skip_counter().report(examples=True))
            self.engine.barrier()
        finally:
            self.engine.close()
        return result

    def _loop(self) -> TrainResult:
        cfg = self.cfg
        if self.is_main:
            atomic_write_text(self.layout.config, dump_config(cfg))
        if self.resume_from is not None:
            self.step, position = self.checkpoints.restore(self.resume_from)
            self.stream.load_state_dict(position.stream)
            self.counter.load_state_dict(position.skips)
        result = TrainResult(run_dir=self.layout.root, steps=self.step)
        for cb in self.callbacks:
            cb.on_start(self)
        position = DataPosition(*self._snapshot())
        batch_iter = self._batches()
        stops = StopRequests(self.layout, self.engine)
        try:
            ck = cfg.checkpoint
            while self.step < cfg.train.max_steps:
                metrics, position = self._optimizer_step(batch_iter)
                result.losses[self.step] = metrics["loss"]
                for cb in self.callbacks:
                    cb.on_step(self, metrics)
                maybe_crash(cfg.debug, self.layout, self.step, self.rank, "after_step")
                stop = stops.requested()  # e.g. SLURM's pre-timeout signal: checkpoint now, then exit
                if stop or self.step % ck.every_steps == 0 or (ck.save_final and self.step == cfg.train.max_steps):
                    result.checkpoints.append(self.checkpoints.save(self.step, position))
                if stop:
                    result.stopped = stops.honoured(stop, self.step)
                    break
            else:
                position.skip_counter().check(cfg.data.max_bad_fraction, final=True)
        finally:
            if isinstance(batch_iter, Prefetcher):
                batch_iter.close()
            for cb in self.callbacks:
                cb.on_end(self)
        self.position = position
        result.steps = self.step
        result.skipped = position.skip_counter().summary()
        return result

