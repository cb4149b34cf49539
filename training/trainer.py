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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from . import __version__
from .callbacks import Callback, JsonlLogger, NonFiniteGuard, ProgressBar, TensorBoardLogger
from .adapters import inspect_adapter
from .checkpoint import (CheckpointError, TrainState, config_hash, read_manifest, resolve_resume,
                         save_checkpoint)
from .config import ConfigError, RunConfig, dump_config
from .data.pipeline import ShardStream, SkipCounter, batches
from .data.prefetch import Prefetched, Prefetcher
from .data.shards import list_shards
from .layout import CKPT_CONFIG, TRAIN_STATE, RunLayout
from .lora import (PEFT_PREFIX, PEFT_WEIGHTS, adapter_state_dict, inject_lora, lora_parameters,
                   peft_config, write_adapter)
from .models import ModelSpec, get_spec
from .objectives import noisy_and_target, sample_sigmas, shift_sigmas
from .runtime import Precision, apply_attention, peak_memory_bytes, resolve_attention, resolve_device
from .schedule import lr_at

log = logging.getLogger("lorabench.train")

# Config fields that must not change between a checkpoint and the run resuming from it.
_RESUME_INVARIANTS = ["seed", "model.family", "model.path", "model.mixed_precision", "lora",
                      "data.shards", "data.width", "data.height", "data.frames",
                      "data.shuffle_buffer", "train.batch_size", "train.grad_accum",
                      "train.timestep_sampling", "train.logit_mean", "train.logit_std", "optim.lr",
                      "optim.betas", "optim.eps", "optim.weight_decay", "optim.warmup_steps",
                      "optim.schedule", "optim.min_lr_ratio"]


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


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


class Trainer:
    def __init__(self, cfg: RunConfig, callbacks: Optional[list[Callback]] = None) -> None:
        self.cfg = cfg
        self.layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
        self.spec: ModelSpec = get_spec(cfg.model.family)
        self.device = resolve_device(cfg.train.device)
        self.precision = Precision.resolve(cfg.model.mixed_precision, self.device)
        self.attention = resolve_attention(cfg.model.attention, self.device)
        self.step = 0
        self.callbacks = callbacks if callbacks is not None else self._default_callbacks()
        self._validate()

    def _default_callbacks(self) -> list[Callback]:
        cbs: list[Callback] = [NonFiniteGuard(), JsonlLogger(self.cfg.log.every_steps)]
        if self.cfg.log.tensorboard:
            cbs.append(TensorBoardLogger(self.cfg.log.every_steps))
        if self.cfg.log.progress:
            cbs.append(ProgressBar())
        return cbs

    # ------------------------------------------------------------------ validation (no weights)

    def _validate(self) -> None:
        cfg = self.cfg
        geo = self.spec.geometry(cfg.model.path)
        problems = geo.check(cfg.data.width, cfg.data.height, cfg.data.frames)
        if problems:
            raise ConfigError("invalid config for model.family=%s:\n  %s" % (cfg.model.family,
                                                                               "\n  ".join(problems)))
        self.shards = list_shards(cfg.data.shards)
        self.resume_from = resolve_resume(self.layout, cfg.train.resume)
        if self.resume_from is None and self.layout.complete_checkpoints():
            raise ConfigError(
                f"{self.layout.root} already holds checkpoints; resume with train.resume=auto, or "
                f"choose another run_name (nothing is overwritten)")
        if self.resume_from is not None:
            self._check_resume_config(self.resume_from)

    def _check_resume_config(self, ckpt: Path) -> None:
        old = yaml.safe_load((ckpt / CKPT_CONFIG).read_text())
        new = self.cfg.to_dict()
        changed = [k for k in _RESUME_INVARIANTS if _lookup(old, k) != _lookup(new, k)]
        if changed:
            details = "; ".join(f"{k}: {_lookup(old, k)!r} -> {_lookup(new, k)!r}" for k in changed)
            raise CheckpointError(f"cannot resume from {ckpt}: settings changed since it was saved "
                                  f"({details}); resume with the checkpoint's config.yaml")

    # ------------------------------------------------------------------ setup (heavy)

    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        self.pipe = self.spec.load_pipeline(cfg.model.path, dtype=self.precision.dtype)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
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
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        # fp16 needs loss scaling (small gradients underflow); a disabled scaler is a passthrough.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.name == "fp16")
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.counter = SkipCounter()
        self.stream = ShardStream(self.shards, modality=self.spec.modality, frames=cfg.data.frames,
                                  height=cfg.data.height, width=cfg.data.width, seed=cfg.seed,
                                  shuffle_buffer=cfg.data.shuffle_buffer, counter=self.counter)
        self.shift = self.spec.flow_shift(self.pipe)
        self.num_timesteps = self.spec.num_train_timesteps(self.pipe)
        self.max_text = cfg.data.max_text_length or self.spec.default_max_text_length
        tr_config = Path(cfg.model.path) / "transformer" / "config.json"
        self.transformer_config_sha256 = config_hash(tr_config)
        self.transformer_config = {k: v for k, v in json.loads(tr_config.read_text()).items()
                                   if not k.startswith("_")}
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _restore(self, ckpt: Path) -> None:
        read_manifest(ckpt, verify=True)
        weights = load_file(str(ckpt / PEFT_WEIGHTS))
        state = {k[len(PEFT_PREFIX):]: v for k, v in weights.items()}
        result = set_peft_model_state_dict(self.model, state, adapter_name="default")
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys or len(state) != len(self.params):
            raise CheckpointError(
                f"{ckpt / PEFT_WEIGHTS} does not match the model's LoRA layout: {len(state)} tensors "
                f"for {len(self.params)} LoRA parameters; missing {missing[:5]}, unexpected "
                f"{list(result.unexpected_keys)[:5]}")
        ts = TrainState.read(ckpt / TRAIN_STATE)
        # data.shards may name a directory whose contents changed: the position would then
        # point into different data. Compare the resolved list, not the config string.
        if ts.extra.get("shards_sha256") not in (None, self._shards_digest()):
            raise CheckpointError(
                f"cannot resume from {ckpt}: the resolved shard list changed ({ts.extra.get('num_shards')} "
                f"shards then, {len(self.shards)} now); restore the original shards or start a new run")
        self.optimizer.load_state_dict(ts.optimizer)
        if ts.extra.get("grad_scaler"):
            self.scaler.load_state_dict(ts.extra["grad_scaler"])
        torch.set_rng_state(ts.rng["torch_cpu"])
        self.generator.set_state(ts.rng["noise"])
        if self.device.type == "cuda" and "cuda" in ts.rng:
            torch.cuda.set_rng_state(ts.rng["cuda"], self.device)
        self.stream.load_state_dict(ts.data)
        self.counter.load_state_dict(ts.skips)
        self.step = ts.step
        log.info("resumed from %s at step %d", ckpt, self.step)

    # ------------------------------------------------------------------ one optimizer step

    def _micro_step(self, batch: dict[str, Any]) -> torch.Tensor:
        pixels = batch["pixels"].to(self.device)
        with torch.no_grad():
            latents = self.spec.encode_pixels(self.pipe, pixels, self.generator).float()
            cond = self.spec.encode_text(self.pipe, batch["captions"], self.device, self.max_text)
        b = latents.shape[0]
        t = self.cfg.train
        # Noise and sigmas drawn on CPU from our generator: identical on any device and resumable.
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        sigmas = shift_sigmas(sample_sigmas(b, self.generator, t.timestep_sampling, t.logit_mean,
                                            t.logit_std), self.shift).to(self.device)
        noisy, target = noisy_and_target(latents, noise, sigmas)
        with self.precision.autocast():
            pred = self.spec.predict(self.pipe, self.model, noisy.to(self.precision.dtype),
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
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        total = 0.0
        for _ in range(cfg.train.grad_accum):
            item = next(batch_iter)
            self._consumed = (item.data_state, item.skip_state)
            loss = self._micro_step(item.batch)
            self.scaler.scale(loss / cfg.train.grad_accum).backward()
            total += loss.item()
        self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, cfg.optim.max_grad_norm or float("inf")).item()
        self.scaler.step(self.optimizer)  # skips the step on inf/nan gradients under fp16
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        skips = self._consumed_skips()
        skips.check(cfg.data.max_bad_fraction)
        self.step += 1
        seconds = time.perf_counter() - start
        samples = cfg.train.batch_size * cfg.train.grad_accum
        return {"step": self.step, "loss": total / cfg.train.grad_accum, "lr": lr,
                "grad_norm": grad_norm, "step_seconds": seconds, "samples_per_s": samples / seconds,
                "peak_memory_bytes": peak_memory_bytes(self.device),
                "skipped_samples": skips.skipped}

    # ------------------------------------------------------------------ checkpoints

    def _train_state(self) -> TrainState:
        rng = {"torch_cpu": torch.get_rng_state(), "noise": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return TrainState(step=self.step, optimizer=self.optimizer.state_dict(), rng=rng,
                          data=self._consumed[0], skips=self._consumed[1],
                          extra={"shards_sha256": self._shards_digest(), "num_shards": len(self.shards),
                                 "grad_scaler": self.scaler.state_dict()})

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
            "data": {"width": cfg.data.width, "height": cfg.data.height, "frames": cfg.data.frames},
            "mixed_precision": cfg.model.mixed_precision,
            "libraries": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "peft": peft.__version__},
        }

    def save(self) -> Path:
        state = adapter_state_dict(self.model)
        if not state:
            raise CheckpointError("the adapter state dict is empty: no LoRA parameters to save")
        path = save_checkpoint(
            self.layout, self.step,
            write_adapter_files=lambda d: write_adapter(d, state, self.lora_cfg, self.cfg.model.path),
            config_yaml=dump_config(self.cfg), train_state=self._train_state(),
            manifest=self._manifest(), keep_last=self.cfg.checkpoint.keep_last)
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

    # ------------------------------------------------------------------ main loop

    def run(self) -> TrainResult:
        start = time.perf_counter()
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.config.write_text(dump_config(self.cfg))
        self._setup()
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
                if self.step % ck.every_steps == 0 or (ck.save_final and self.step == self.cfg.train.max_steps):
                    result.checkpoints.append(self.save())
            self._consumed_skips().check(self.cfg.data.max_bad_fraction, final=True)
        finally:
            if isinstance(batch_iter, Prefetcher):
                batch_iter.close()
            for cb in self.callbacks:
                cb.on_end(self)
        result.steps = self.step
        result.skipped = self._consumed_skips().summary()
        result.seconds = time.perf_counter() - start
        log.info("%s", result.skipped)
        return result
