"""The distributed engine: accelerate + DeepSpeed (ZeRO 0/1/2/3), one rank per process.

This is the only module of ``training/`` that imports DeepSpeed. Every multi-rank run goes
through DeepSpeed (stage 0 when no stage is configured, which is plain data parallelism), so
there is one distributed code path to test instead of two. The process group comes from the
launcher: Ray Train and torchrun set RANK/WORLD_SIZE/MASTER_ADDR; a single plain process
gets defaults so DeepSpeed does not go looking for MPI.

Known failures this module exists to avoid (see the field notes):
- ZeRO-3 + LoRA saving empty adapters: adapter tensors are read with DeepSpeed's full-fp32
  accessor (a collective), never from the partitioned module ``state_dict``;
- DeepSpeed's ``module.`` prefix in saved keys: names come from the unwrapped model;
- resume that does not reload the LoRA: after loading, the trainer compares the live adapter
  with the checkpoint's adapter file tensor by tensor.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    # Must be set before DeepSpeed is imported, or it probes for other accelerators.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param  # noqa: E402

from ..checkpoint import CheckpointError  # noqa: E402
from ..config import ConfigError  # noqa: E402
from ..runtime import Precision  # noqa: E402
from .base import Engine, EngineSettings, NamedParams, world_from_env  # noqa: E402

DEEPSPEED_DIR = "deepspeed"
_DS_TAG = "state"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_dist_env() -> None:
    """A lone process (no launcher) still needs the env:// variables DeepSpeed reads."""
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))


def resolve_deepspeed_config(settings: EngineSettings, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config: the JSON file (or stage 0), with every "auto" filled from the run's settings.

    Values that the run config owns (batch size, accumulation, clipping, precision) must be
    "auto" or agree with it; the optimizer and LR schedule come from ``optim.*``, so DeepSpeed
    ``optimizer``/``scheduler`` sections are refused rather than silently ignored.
    """
    src = settings.deepspeed_config
    if src:
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"deepspeed.config={src}: no such file (shipped: configs/deepspeed/zero2.json, "
                              f"zero3.json)")
        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"deepspeed.config={src}: not valid JSON: {e}") from None
    else:
        ds = {}
    ds = copy.deepcopy(ds)
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(f"{src}: remove the '{section}' section; lorabench builds AdamW from optim.* "
                              f"and sets the learning rate from optim.schedule every step")
    zero = ds.setdefault("zero_optimization", {})
    if settings.zero_stage is not None:
        zero["stage"] = settings.zero_stage
    zero.setdefault("stage", 0)
    t, mp = settings, settings.mixed_precision
    owned = {
        "train_micro_batch_size_per_gpu": (t.batch_size, "train.batch_size"),
        "gradient_accumulation_steps": (t.grad_accum, "train.grad_accum"),
        "gradient_clipping": (t.max_grad_norm or 0.0, "optim.max_grad_norm"),
        "train_batch_size": (t.batch_size * t.grad_accum * world_size,
                             "train.batch_size x train.grad_accum x workers"),
    }
    for key, (value, field) in owned.items():
        have = ds.get(key, "auto")
        if have != "auto" and have != value:
            raise ConfigError(f"{src}: {key}={have} disagrees with {field}={value}; set it to \"auto\"")
        ds[key] = value
    # bf16 is lorabench's own (bf16 frozen weights + autocast, fp32 LoRA), not DeepSpeed's: its
    # bf16 mode casts the whole module, so the fp32-kept modules (Wan's scale_shift_table, norms)
    # and the LoRA weights themselves would become bf16, multi-rank runs would compute unlike
    # single-process ones, and ZeRO-0 would save bf16-rounded adapters. The trainable LoRA
    # weights are fp32 and tiny, so DeepSpeed runs in fp32 mode on them: they are the masters.
    # fp16 (GPUs without bf16) still uses DeepSpeed's loss scaling and fp32 master copies.
    for name in ("bf16", "fp16"):
        section = ds.setdefault(name, {})
        want = mp == name and name == "fp16"
        have = section.get("enabled", "auto")
        if name == "bf16" and have is True and mp == "bf16":
            raise ConfigError(f"{src}: bf16.enabled=true: remove it or set it to \"auto\". model.mixed_precision="
                              "bf16 is done by lorabench (bf16 base weights, autocast, fp32 LoRA masters); "
                              "DeepSpeed's bf16 mode would cast the fp32-kept modules and the LoRA to bf16")
        if have not in ("auto", want) and not (name == "bf16" and have is False):
            raise ConfigError(f"{src}: {name}.enabled={section['enabled']} disagrees with "
                              f"model.mixed_precision={mp}; set it to \"auto\"")
        section["enabled"] = want
    ds["zero_allow_untested_optimizer"] = True  # a torch AdamW: no FusedAdam build on CPU
    ds.setdefault("steps_per_print", 10**9)
    return ds


class AccelerateEngine(Engine):
    kind = "deepspeed"

    def __init__(self, settings: EngineSettings, device: torch.device, precision: Precision) -> None:
        super().__init__(settings, device, precision)
        _ensure_dist_env()
        self.rank, self.local_rank, self.world_size = world_from_env()
        self.ds_config = resolve_deepspeed_config(settings, self.world_size)
        self.stage = int(self.ds_config["zero_optimization"]["stage"])
        backend = "nccl" if device.type == "cuda" else "gloo"
        plugin = DeepSpeedPlugin(hf_ds_config=self.ds_config)
        # accelerate's bf16 would switch DeepSpeed's bf16 mode on (see resolve_deepspeed_config);
        # the trainer autocasts itself.
        mixed = "fp16" if precision.name == "fp16" else "no"
        # cpu=False even on CPU: accelerate's cpu=True silently drops the DeepSpeed plugin.
        self.acc = Accelerator(cpu=False, deepspeed_plugin=plugin, mixed_precision=mixed,
                               gradient_accumulation_steps=settings.grad_accum,
                               kwargs_handlers=[InitProcessGroupKwargs(
                                   backend=backend, timeout=datetime.timedelta(minutes=30))])
        self.device = self.acc.device
        self.precision = Precision(precision.name, self.device)

    @property
    def description(self) -> str:
        return f"DeepSpeed ZeRO-{self.stage} via accelerate, {self.world_size} rank(s), {dist.get_backend()}"

    # ---------------------------------------------------------------- model and optimizer

    @contextlib.contextmanager
    def model_loading(self):
        """Load the pipeline unpartitioned, even under ZeRO-3.

        While accelerate's ZeRO-3 config is registered with transformers, every
        ``from_pretrained`` partitions its weights at load time (``zero.Init``). Only the
        trained transformer goes through DeepSpeed; the frozen text encoder and VAE would
        be left as empty shards ("'weight' must be 2-D"). The transformer is partitioned
        later, by ``prepare``.
        """
        from transformers.integrations import unset_hf_deepspeed_config
        plugin = self.acc.state.deepspeed_plugin
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            plugin.set_deepspeed_weakref()

    def prepare(self, model, params, optimizer):
        self.params = params
        self._model = model
        self.wrapped, self.optimizer = self.acc.prepare(model, optimizer)
        self.ds_engine = self.wrapped  # accelerate returns the DeepSpeedEngine itself
        self._micro = 0
        return self.wrapped

    def set_lr(self, lr: float) -> None:
        for group in self.ds_engine.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # DeepSpeed divides by gradient_accumulation_steps itself and steps (clip, update,
        # zero) at the boundary, which accelerate marks through sync_gradients.
        self.acc.gradient_state._set_sync_gradients(last_micro_batch)
        self.acc.backward(loss)

    def step(self) -> float:
        norm = self.ds_engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def adapter_state(self, named: NamedParams) -> dict[str, torch.Tensor]:
        out = {}
        for key, p in named():
            # The fp32 master, full size, on every rank (collective under ZeRO >= 1).
            full = safe_get_full_fp32_param(p) if self.stage >= 1 else p.detach()
            if full is None:
                raise CheckpointError(f"DeepSpeed returned no fp32 master for {key} (ZeRO-{self.stage})")
            out[key] = full.detach().to("cpu", torch.float32).clone().contiguous()
        return out

    # ---------------------------------------------------------------- optimizer state

    def save_optimizer(self, folder: Path) -> None:
        # DeepSpeed's own per-rank partition files (collective). Frozen base weights are left
        # out: for a 14B model they would be 28 GB per checkpoint and never change.
        self.ds_engine.save_checkpoint(str(folder / DEEPSPEED_DIR), tag=_DS_TAG,
                                       exclude_frozen_parameters=True, save_latest=False)

    def load_optimizer(self, folder: Path) -> None:
        path = folder / DEEPSPEED_DIR
        if not (path / _DS_TAG).is_dir():
            raise CheckpointError(f"{path / _DS_TAG} is missing: this checkpoint was not written by the "
                                  f"DeepSpeed engine, or is incomplete")
        loaded, _ = self.ds_engine.load_checkpoint(str(path), tag=_DS_TAG, load_module_strict=False,
                                                   load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {path / _DS_TAG}")

    # ---------------------------------------------------------------- collectives

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def memory_report(self) -> dict[str, int]:
        """Bytes of parameters, gradients and optimizer state held by this rank.

        Parameters: partition sizes under ZeRO-3 (``ds_tensor``), full tensors otherwise.
        Optimizer: the base optimizer's moments plus DeepSpeed's fp32 master partitions.
        Gradients: the fp32 partition under ZeRO-2/3, the full trainable size otherwise.
        """
        params = 0
        for p in self._model.parameters():
            t = getattr(p, "ds_tensor", None)
            t = t if t is not None else p
            params += t.numel() * t.element_size()
        zopt = self.ds_engine.optimizer
        base = getattr(zopt, "optimizer", zopt)
        opt = sum(t.numel() * t.element_size() for s in base.state.values() for t in s.values()
                  if torch.is_tensor(t))
        masters = (getattr(zopt, "single_partition_of_fp32_groups", None)
                   or getattr(zopt, "fp32_partitioned_groups_flat", None) or [])
        master_numel = sum(m.numel() for m in masters)
        opt += master_numel * 4  # ZeRO >= 1 keeps its own fp32 copy, even when training in fp32
        trainable = sum(p.numel() for p in self.params)
        grads = (master_numel if self.stage >= 2 and master_numel else trainable) * 4
        return {"params": params, "grads": grads, "optimizer": opt}

    def close(self) -> None:
        # Ray and torchrun own the process group; a lone process tears down its own.
        self.acc.free_memory()
