"""The checkpoint manager: save and restore a run's state at a step boundary, and prove both.

The on-disk format (temp folder, manifest, space checks, rank files) is :mod:`training.checkpoint`;
this module decides *what* a training run puts in it and checks what comes back:

* save (a collective, every rank calls it): each rank writes its RNG and data position (and,
  under DeepSpeed, its optimizer partition) into one temporary folder; rank 0 writes the adapter,
  the resolved config and the manifest, publishes the folder with one rename, then re-reads the
  adapter and loads it back onto the model with full coverage, so a bad save fails at its step;
* restore: the engine, world size and resolved shard list must be those of the checkpoint, and
  the live adapter after loading must equal the file tensor by tensor (a resume that silently
  kept the fresh LoRA is a known failure of the field).

The data position is passed in explicitly (:class:`DataPosition`): it is the position after the
last batch an optimizer step consumed, not where a prefetching loader has got to.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from . import __version__
from .adapters import inspect_adapter
from .checkpoint import (CheckpointError, CheckpointSpaceError, RankState, begin_checkpoint, config_hash,
                         publish_checkpoint, read_manifest, read_shared_state, remove_temp_checkpoints,
                         space_errors, space_shortfall, write_shared_state)
from .config import RunConfig, dump_config
from .data.skips import SkipCounter
from .engines import Engine
from .faults import maybe_crash
from .fsio import sha256_bytes
from .layout import CKPT_CONFIG, TRAIN_STATE, RunLayout
from .adapters.files import PEFT_PREFIX, PEFT_WEIGHTS
from .lora import lora_named_parameters, write_adapter
from .precision import ComponentDtypes

log = logging.getLogger("lorabench.train")


@dataclass
class DataPosition:
    """The data stream's state and the skip counts as of the last consumed batch."""

    stream: dict[str, Any]
    skips: dict[str, Any]

    def skip_counter(self) -> SkipCounter:
        counter = SkipCounter()
        counter.load_state_dict(self.skips)
        return counter


def shards_digest(shards: list[str]) -> str:
    """Hash of the resolved shard list: a data.shards folder whose contents changed is caught."""
    return sha256_bytes("\n".join(shards).encode())


class CheckpointManager:
    """Saves and restores one rank's part of a run; ``save`` and ``restore`` are collectives."""

    def __init__(self, cfg: RunConfig, layout: RunLayout, engine: Engine, *, model: torch.nn.Module,
                 lora_cfg: Any, adapted_modules: int, dtypes: ComponentDtypes, shards: list[str],
                 generator: torch.Generator) -> None:
        self.cfg, self.layout, self.engine = cfg, layout, engine
        self.model, self.lora_cfg, self.adapted_modules = model, lora_cfg, adapted_modules
        self.dtypes, self.shards, self.generator = dtypes, shards, generator
        self.rank, self.world_size = engine.rank, engine.world_size
        tr_config = Path(cfg.model.path) / "transformer" / "config.json"
        self.transformer_config_sha256 = config_hash(tr_config)
        self.transformer_config = {k: v for k, v in json.loads(tr_config.read_text()).items()
                                   if not k.startswith("_")}

    def _named_lora(self) -> list[tuple[str, torch.nn.Parameter]]:
        return lora_named_parameters(self.model)

    # ------------------------------------------------------------------ save

    def save(self, step: int, position: DataPosition) -> Path:
        """Write checkpoint ``step`` (every rank calls it) and return its folder."""
        engine = self.engine
        refusal = None
        if engine.is_main:  # no save is in flight: drop temp folders of failed saves, then check space
            remove_temp_checkpoints(self.layout)
            refusal = space_shortfall(self.layout, step)
        token, refusal = engine.broadcast_object((uuid.uuid4().hex[:8], refusal))
        if refusal is not None:  # every rank stops before anything is written
            raise CheckpointSpaceError(refusal)
        tmp = self.layout.temp_checkpoint(step, token)
        # A lone rank removes the temp folder when a write fails; with more ranks another may
        # still be writing into it, and the next save removes it.
        with space_errors(self.layout, step, tmp, cleanup=self.world_size == 1):
            if engine.is_main:
                (begin_checkpoint(self.layout, step, token) / TRAIN_STATE).mkdir()
            engine.barrier()
            engine.save_optimizer(tmp / TRAIN_STATE)
            self._rank_state(position).write(tmp / TRAIN_STATE, self.rank)
        state = engine.adapter_state(self._named_lora)  # gathered fp32 masters (ZeRO-3: collective)
        maybe_crash(self.cfg.debug, self.layout, step, self.rank, "during_save")
        engine.barrier()
        error: Optional[BaseException] = None
        path = self.layout.checkpoint(step)
        if engine.is_main:
            try:
                with space_errors(self.layout, step, tmp):  # every rank is done writing into tmp
                    path = self._publish(step, tmp, state)
            except BaseException as e:  # the other ranks must hear about it, not hang
                error = e
        message = engine.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointError(f"rank 0 failed to save checkpoint {path}: {message}")
        return path

    def _rank_state(self, position: DataPosition) -> RankState:
        rng = {"torch_cpu": torch.get_rng_state(), "noise": self.generator.get_state()}
        if self.engine.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.engine.device)
        return RankState(rng=rng, data=position.stream, skips=position.skips)

    def _publish(self, step: int, tmp: Path, state: dict[str, torch.Tensor]) -> Path:
        if not state or any(t.numel() == 0 for t in state.values()):
            raise CheckpointError("the adapter state is empty (ZeRO-3 partitions not gathered?): "
                                  "refusing to write a checkpoint without the trained weights")
        write_adapter(tmp, state, self.lora_cfg, self.cfg.model.path)
        (tmp / CKPT_CONFIG).write_text(dump_config(self.cfg))
        write_shared_state(tmp / TRAIN_STATE, step, self.world_size, self.engine.kind,
                           {"shards_sha256": shards_digest(self.shards), "num_shards": len(self.shards)})
        path = publish_checkpoint(self.layout, step, tmp, self.manifest(),
                                  keep_last=self.cfg.checkpoint.keep_last)
        # A bad save must be caught now, not at eval time: re-read and compare every tensor.
        saved = load_file(str(path / PEFT_WEIGHTS))
        if set(saved) != {PEFT_PREFIX + k for k in state} or any(
                not torch.equal(saved[PEFT_PREFIX + k], v) for k, v in state.items()):
            raise CheckpointError(f"{path / PEFT_WEIGHTS} does not hold the trained adapter")
        # And it must load back onto this architecture with full coverage through the same
        # loader eval uses (names and shapes only, no forward): a bad save fails at this step.
        report = inspect_adapter(path, self.model)
        if not report.ok or len(report.matched) != self.adapted_modules:
            raise CheckpointError(f"{path} does not reload with full coverage "
                                  f"({len(report.matched)} of {self.adapted_modules} modules):\n"
                                  f"{report.to_table()}")
        return path

    def manifest(self) -> dict[str, Any]:
        """What the checkpoint was trained from and with: checked by adapter loading and eval."""
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
                     "adapted_modules": self.adapted_modules},
            "data": {"width": cfg.data.width, "height": cfg.data.height, "frames": cfg.data.frames,
                     "fps": cfg.data.fps},
            "mixed_precision": cfg.model.mixed_precision,
            "component_dtypes": self.dtypes.to_dict(),
            "libraries": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                          "peft": peft.__version__},
        }

    # ------------------------------------------------------------------ restore

    def restore(self, ckpt: Path) -> tuple[int, DataPosition]:
        """Load adapter, optimizer and this rank's RNG state from ``ckpt``; returns the step and
        the data position to continue from."""
        read_manifest(ckpt, verify=True)
        folder = ckpt / TRAIN_STATE
        shared = read_shared_state(folder)
        engine = self.engine
        if (shared.get("world_size"), shared.get("engine")) != (self.world_size, engine.kind):
            raise CheckpointError(
                f"cannot resume from {ckpt}: it was written by {shared.get('world_size')} rank(s) with the "
                f"{shared.get('engine')} engine, this run has {self.world_size} with {engine.kind}. Exact "
                f"resume needs the same parallel.num_workers and deepspeed settings.")
        # data.shards may name a directory whose contents changed: the position would then
        # point into different data. Compare the resolved list, not the config string.
        extra = shared.get("extra", {})
        if extra.get("shards_sha256") not in (None, shards_digest(self.shards)):
            raise CheckpointError(
                f"cannot resume from {ckpt}: the resolved shard list changed ({extra.get('num_shards')} "
                f"shards then, {len(self.shards)} now); restore the original shards or start a new run")
        saved = {k[len(PEFT_PREFIX):]: v for k, v in load_file(str(ckpt / PEFT_WEIGHTS)).items()}
        if engine.kind == "local":
            result = set_peft_model_state_dict(self.model, saved, adapter_name="default")
            if [k for k in result.missing_keys if "lora_" in k] or result.unexpected_keys:
                raise CheckpointError(f"{ckpt / PEFT_WEIGHTS} does not match the model's LoRA layout")
        engine.load_optimizer(folder)  # DeepSpeed restores its module and fp32 masters here
        live = engine.adapter_state(self._named_lora)
        differ = sorted(set(live) ^ set(saved)) or [k for k in saved if not torch.equal(live[k], saved[k])]
        if differ:
            raise CheckpointError(f"resuming from {ckpt} did not restore the adapter: {len(differ)} "
                                  f"tensor(s) differ from {ckpt / PEFT_WEIGHTS}, e.g. {differ[:3]}")
        rs = RankState.read(folder, self.rank)
        torch.set_rng_state(rs.rng["torch_cpu"])
        self.generator.set_state(rs.rng["noise"])
        if engine.device.type == "cuda" and "cuda" in rs.rng:
            torch.cuda.set_rng_state(rs.rng["cuda"], engine.device)
        log.info("resumed from %s at step %d", ckpt, shared["step"])
        return shared["step"], DataPosition(rs.data, rs.skips)
