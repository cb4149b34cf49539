"""A memory plan for a training run, computed from JSON configs before any weights load.

Three kinds of bytes decide whether a run fits:

- **model components** (denoiser, VAE, text encoders): counted exactly. Each component is
  built from its folder's config on the meta device (no memory, no weights) and every
  parameter and persistent buffer is counted in the dtype the loader gives it: the
  component's dtype (``ComponentDtypes``), fp32 for the modules the model class keeps in fp32,
  and its own dtype for integer tensors. The result equals the bytes of the modules
  ``spec.load_pipeline(path, dtype=ComponentDtypes(...))`` returns (tested on tiny models);
- **LoRA state**: counted exactly from the adapted ``nn.Linear`` shapes (rank x (in + out)),
  in fp32 (weights, gradients, AdamW moments, and DeepSpeed's fp32 master under ZeRO >= 1),
  divided over ranks as each ZeRO stage does;
- **activations** of one denoiser micro-step: an **estimate** (see ``estimate_activations``).

``plan_training(cfg)`` combines them with where each component lives (``model.offload_encoders``)
into a per-rank accelerator peak; ``MemoryPlan.table()`` prints it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from .config import RunConfig
from .models import ModelSpec, get_spec
from .precision import DTYPE_NAMES, DTYPES, ComponentDtypes, component_role, kept_in_fp32

GIB = 1024 ** 3

ACCELERATOR = "accelerator"
OFFLOADED = "cpu (moved in per use)"

#: Bytes of saved activations per token, per hidden unit, per transformer block, in units of
#: the activation dtype's size (see ``estimate_activations`` for the measurement behind it).
ACTIVATION_CONSTANT = 30

#: Text tokens that pass through every block of a joint-attention (MMDiT) denoiser besides the
#: T5 tokens: SD3's two CLIP encoders, 77 tokens each, concatenated channel-wise (not in length).
_CLIP_TOKENS = 77


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


# ============================================================================ components


@dataclass
class ComponentBytes:
    """One pipeline component as the loader will hold it."""

    name: str             # pipeline attribute: transformer, vae, text_encoder, text_encoder_2, ...
    role: str             # denoiser | vae | text
    library: str          # diffusers | transformers
    class_name: str
    params: int           # parameter elements (tied parameters once)
    buffers: int          # persistent buffer elements
    dtype: str            # the component's dtype name
    fp32_params: int      # elements kept in fp32 (``_keep_in_fp32_modules``) despite ``dtype``
    bytes: int            # parameters + persistent buffers, as loaded
    buffer_bytes: int = 0  # of which persistent buffers (ZeRO-3 partitions parameters only)
    where: str = ACCELERATOR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _meta_module(library: str, class_name: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The component class instantiated from its folder's config, every tensor on ``meta``."""
    from accelerate import init_empty_weights

    try:
        cls = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError):
        raise ValueError(f"{folder}: model_index.json names {library}.{class_name}, which this "
                         f"environment does not provide") from None
    if library == "diffusers":
        with init_empty_weights(include_buffers=True):
            return cls.from_config(cls.load_config(str(folder)))
    if library == "transformers":
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        # As from_pretrained(dtype=...) does: the config carries the dtype (sub-models built with
        # ``_from_config`` inside __init__, e.g. CLIP's text tower, read it from there), the model
        # is built with it as torch's default dtype (floating tensors take it, explicitly typed
        # ones keep theirs), and weights are tied after loading.
        config.dtype = dtype
        for key in getattr(config, "sub_configs", {}) or {}:
            if getattr(config, key, None) is not None:
                getattr(config, key).dtype = dtype
        with init_empty_weights(include_buffers=True), _default_dtype(dtype):
            model = cls(config)
        model.tie_weights()
        return model
    raise ValueError(f"{folder}: components from library {library!r} are not supported "
                     f"(only diffusers and transformers)")


def _fp32_rule(library: str, model: torch.nn.Module, dtype: torch.dtype):
    """``key -> bool``: is this floating tensor loaded in fp32 whatever ``dtype`` asks?

    Each library's own rule:
    - diffusers keeps ``_keep_in_fp32_modules`` in fp32 for every dtype, matching a name
      *segment* of the state-dict key (``load_model_dict_into_meta``);
    - transformers keeps ``_keep_in_fp32_modules`` only when loading in fp16, and
      ``_keep_in_fp32_modules_strict`` for fp16 and bf16, matching the pattern anywhere in the
      key (a regex search; ``*`` is a wildcard).
    """
    if library == "diffusers":
        return kept_in_fp32(model)
    patterns: list[str] = []
    if dtype == torch.float16:
        patterns += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if dtype in (torch.float16, torch.bfloat16):
        patterns += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if not patterns:
        return lambda key: False
    regex = re.compile("|".join(f"(?:{p.replace('*', '.*')})" for p in patterns))
    return lambda key: regex.search(key) is not None


def _loaded_dtype(library: str, t: torch.Tensor, dtype: torch.dtype, keep_fp32: bool) -> torch.dtype:
    if not t.is_floating_point():
        return t.dtype  # integer/bool tensors are never cast
    if keep_fp32:
        return torch.float32
    # diffusers casts every floating tensor of the checkpoint to ``dtype``; transformers keeps
    # the dtype the tensor was created with (``dtype`` by default, see ``_meta_module``).
    return dtype if library == "diffusers" else t.dtype


def count_module(library: str, model: torch.nn.Module, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(parameter elements, persistent buffer elements, fp32-kept elements, bytes as loaded,
    of which buffer bytes)."""
    fp32 = _fp32_rule(library, model, dtype)
    persistent = set(model.state_dict(keep_vars=True))
    params = buffers = kept = nbytes = buffer_bytes = 0
    tensors = [(n, p, True) for n, p in model.named_parameters()]
    tensors += [(n, b, False) for n, b in model.named_buffers() if n in persistent]
    for name, t, is_param in tensors:
        keep = t.is_floating_point() and fp32(name)
        loaded = _loaded_dtype(library, t, dtype, keep)
        n = t.numel()
        if is_param:
            params += n
        else:
            buffers += n
            buffer_bytes += n * loaded.itemsize
        if keep and dtype != torch.float32:
            kept += n
        nbytes += n * loaded.itemsize
    return params, buffers, kept, nbytes, buffer_bytes


def _spec(family_or_spec: Union[str, ModelSpec]) -> ModelSpec:
    return get_spec(family_or_spec) if isinstance(family_or_spec, str) else family_or_spec


def _components(path: Path, spec: ModelSpec, dtypes: ComponentDtypes, without: tuple[str, ...] = ()
                ) -> list[tuple[ComponentBytes, torch.nn.Module]]:
    spec.validate_folder(path)
    index = spec.read_model_index(path)
    out = []
    for name in spec.components(path):
        if name in without:
            continue
        library, class_name = index[name]
        dtype = dtypes.dtype_for(name)
        model = _meta_module(library, class_name, path / name, dtype)
        params, buffers, kept, nbytes, buffer_bytes = count_module(library, model, dtype)
        out.append((ComponentBytes(name=name, role=component_role(name) or "denoiser", library=library,
                                   class_name=class_name, params=params, buffers=buffers,
                                   dtype=DTYPE_NAMES[dtype], fp32_params=kept, bytes=nbytes,
                                   buffer_bytes=buffer_bytes), model))
    return out


def plan_components(model_path: Union[str, Path], family_or_spec: Union[str, ModelSpec],
                    dtypes: ComponentDtypes) -> list[ComponentBytes]:
    """Every model component of a folder with its exact loaded size; reads configs only."""
    return [c for c, _ in _components(Path(model_path), _spec(family_or_spec), dtypes)]


# ============================================================================ LoRA


@dataclass
class LoraBytes:
    """LoRA state held by one rank, in bytes (all fp32)."""

    rank: int
    targets: list[str]
    modules: int          # adapted nn.Linear layers
    params: int           # LoRA parameter elements (full adapter, all ranks together)
    weights: int          # the fp32 LoRA weights in the module
    grads: int
    optimizer: int        # AdamW exp_avg + exp_avg_sq
    master: int           # DeepSpeed's own fp32 copy (ZeRO >= 1)

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.master

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), total=self.total)


def lora_shapes(model: torch.nn.Module, targets: list[str]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of each ``nn.Linear`` a LoRA with ``targets`` adapts.

    The rule of ``training.lora.inject_lora`` (and peft): a module named ``t`` or ending in
    ``.t``. A target matching no module at all is an error, as in ``inject_lora``.
    """
    from .lora import check_targets, is_target

    check_targets(model, targets)
    return [(n, m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and is_target(n, targets)]


def lora_bytes(params: int, rank: int, targets: list[str], modules: int, zero_stage: Optional[int],
               world_size: int) -> LoraBytes:
    """Per-rank bytes of the LoRA state under each engine.

    Single process / DDP / ZeRO-0: weights, grads and both AdamW moments, whole, on every rank.
    ZeRO-1 partitions the optimizer state (moments and DeepSpeed's fp32 master); ZeRO-2 also
    the gradients; ZeRO-3 also the weights themselves.
    """
    stage = zero_stage or 0
    part = lambda n: math.ceil(n / world_size)  # noqa: E731
    weights, grads, moments = 4 * params, 4 * params, 8 * params
    master = 4 * params if stage >= 1 else 0
    if stage >= 1:
        moments, master = part(moments), part(master)
    if stage >= 2:
        grads = part(grads)
    if stage >= 3:
        weights = part(weights)
    return LoraBytes(rank=rank, targets=list(targets), modules=modules, params=params, weights=weights,
                     grads=grads, optimizer=moments, master=master)


# ============================================================================ activations


@dataclass
class ActivationEstimate:
    """Saved activations of one denoiser micro-step (forward + backward): an ESTIMATE."""

    tokens: int                 # sequence tokens per micro-batch (latent patches x batch)
    context_tokens: int         # text tokens that run through every block (joint attention)
    hidden: int
    layers: int
    bytes_per_element: int
    per_layer: int              # one block's saved activations
    without_checkpointing: int
    with_checkpointing: int
    checkpointing: bool         # which one the run uses

    @property
    def used(self) -> int:
        return self.with_checkpointing if self.checkpointing else self.without_checkpointing

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), used=self.used, estimate=True)


def latent_tokens(spec: ModelSpec, path: Union[str, Path], width: int, height: int, frames: int) -> int:
    """Transformer tokens of one sample: latent frames x latent patches per frame."""
    geo = spec.geometry(path)
    latent_frames = (frames - 1) // geo.temporal + 1
    return (latent_frames * (height // geo.spatial // geo.patch[0])
            * (width // geo.spatial // geo.patch[1]))


def estimate_activations(tokens: int, hidden: int, layers: int, bytes_per_element: int,
                         checkpointing: bool, context_tokens: int = 0) -> ActivationEstimate:
    """Activations kept for the backward of one micro-step (an estimate).

    Formula, with S = tokens + context_tokens (every token a block processes), h = hidden
    (heads x head_dim), L = blocks and e = bytes per activation element:

        one block:                  A = c * S * h * e,  c = ACTIVATION_CONSTANT = 30
        without checkpointing:      L * A
        with checkpointing:         L * S * h * e  +  A
                                    (each block's input is kept; one block's full activations
                                    live while it is recomputed for its backward)

    Attention is SDPA/flash-style: it keeps its output and log-sum-exp, never the S x S
    scores, so there is no S^2 term. ``c`` is the measured bytes that autograd saves per
    token per hidden unit per block (summed with ``torch.autograd.graph.saved_tensors_hooks``
    over one real-width block, bf16 autocast, default attention LoRA targets, rank 32), in
    units of e = 2: Wan2.1-1.3B 30.9, Wan2.2-TI2V-5B 29.6 (fp32 norms and modulation,
    cross-attention, the GELU input of a 4.7-5.8 h FFN), SD3.5-medium 28.0 on average (34.2
    for its 13 dual-attention blocks, 20.7 for the others). Not included: the embedding/output
    layers and the loss (under 1%), the backward's transient gradient buffers, the VAE/text
    encode pass (runs before the forward, no grad) and allocator fragmentation.
    """
    s = tokens + context_tokens
    per_layer = ACTIVATION_CONSTANT * s * hidden * bytes_per_element
    return ActivationEstimate(
        tokens=tokens, context_tokens=context_tokens, hidden=hidden, layers=layers,
        bytes_per_element=bytes_per_element, per_layer=per_layer,
        without_checkpointing=layers * per_layer,
        with_checkpointing=layers * s * hidden * bytes_per_element + per_layer,
        checkpointing=checkpointing)


def denoiser_shape(config: dict[str, Any]) -> tuple[int, int]:
    """(hidden, blocks) from a diffusers transformer config (Wan, SD3 and most DiTs)."""
    try:
        return int(config["num_attention_heads"]) * int(config["attention_head_dim"]), int(config["num_layers"])
    except KeyError as e:
        raise ValueError(f"{config.get('_class_name')}: config has no {e.args[0]!r}; cannot estimate "
                         f"activations for this denoiser") from None


# ============================================================================ the plan


@dataclass
class MemoryPlan:
    model_path: str
    family: str
    dtypes: dict[str, str]
    world_size: int
    zero_stage: Optional[int]
    offload_encoders: bool
    batch_size: int
    shape: tuple[int, int, int]            # width, height, frames
    components: list[ComponentBytes]
    lora: LoraBytes
    activations: ActivationEstimate
    zero3_gather: int = 0                  # one block's parameters, gathered whole under ZeRO-3 (estimate)
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ derived

    def component_bytes_on_rank(self, c: ComponentBytes) -> int:
        """Bytes of ``c`` on one rank's accelerator.

        ZeRO-3 partitions the denoiser's parameters (frozen ones too) over the ranks; its
        buffers stay whole on every rank.
        """
        if c.role == "denoiser" and (self.zero_stage or 0) >= 3:
            return math.ceil((c.bytes - c.buffer_bytes) / self.world_size) + c.buffer_bytes
        return c.bytes

    @property
    def resident(self) -> int:
        """Components that stay on the accelerator."""
        return sum(self.component_bytes_on_rank(c) for c in self.components if c.where == ACCELERATOR)

    @property
    def largest_offloaded(self) -> int:
        return max((c.bytes for c in self.components if c.where != ACCELERATOR), default=0)

    def accelerator_peak(self, checkpointing: Optional[bool] = None) -> int:
        """Peak bytes on one rank's accelerator (activations estimated).

        Offloaded encoders come in one at a time, so the largest one is counted (a bound: in
        the trainer they are moved out again before the denoiser's forward).
        """
        act = self.activations
        used = act.used if checkpointing is None else (
            act.with_checkpointing if checkpointing else act.without_checkpointing)
        return self.resident + self.largest_offloaded + self.lora.total + used + self.zero3_gather

    @property
    def cpu_ram(self) -> int:
        """Steady CPU RAM per rank for model state: the offloaded encoders."""
        return sum(c.bytes for c in self.components if c.where != ACCELERATOR)

    @property
    def cpu_ram_loading(self) -> int:
        """CPU RAM per rank while loading: the whole pipeline is read on the CPU first."""
        return sum(c.bytes for c in self.components)

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path, "family": self.family, "dtypes": dict(self.dtypes),
            "world_size": self.world_size, "zero_stage": self.zero_stage,
            "offload_encoders": self.offload_encoders, "batch_size": self.batch_size,
            "shape": {"width": self.shape[0], "height": self.shape[1], "frames": self.shape[2]},
            "components": [dict(c.to_dict(), bytes_on_rank=self.component_bytes_on_rank(c))
                           for c in self.components],
            "lora": self.lora.to_dict(),
            "activations_estimate": self.activations.to_dict(),
            "zero3_gather_estimate": self.zero3_gather,
            "accelerator_peak_per_rank_estimate": self.accelerator_peak(),
            "accelerator_peak_per_rank_estimate_without_checkpointing": self.accelerator_peak(False),
            "accelerator_peak_per_rank_estimate_with_checkpointing": self.accelerator_peak(True),
            "cpu_ram_per_rank": self.cpu_ram,
            "cpu_ram_per_rank_while_loading": self.cpu_ram_loading,
            "notes": list(self.notes),
        }

    def table(self) -> str:
        w, h, f = self.shape
        engine = (f"ZeRO-{self.zero_stage}" if self.zero_stage is not None else "no DeepSpeed")
        lines = [f"memory plan: {self.model_path} ({self.family}), {w}x{h}x{f}, batch {self.batch_size}, "
                 f"{self.world_size} rank(s), {engine}; GiB per rank"]
        head = (f"{'component':<16}{'class':<30}{'params':>15}{'buffers':>13}  {'dtype':<11}{'GiB':>7}"
                f"  where")
        lines += [head, "-" * len(head)]
        for c in self.components:
            dtype = c.dtype + ("+fp32*" if c.fp32_params else "")
            on_rank = self.component_bytes_on_rank(c)
            where = c.where + (f" (1/{self.world_size}, ZeRO-3)" if on_rank != c.bytes else "")
            lines.append(f"{c.name:<16}{c.class_name:<30}{c.params:>15,}{c.buffers:>13,}  {dtype:<11}"
                         f"{gib(on_rank):>7}  {where}")
        kept = [c for c in self.components if c.fp32_params]
        for c in kept:
            lines.append(f"  * {c.name}: {c.fp32_params:,} params kept in fp32 (_keep_in_fp32_modules)")
        lo = self.lora
        lines.append(f"LoRA r={lo.rank} on {lo.modules} linear layers ({', '.join(lo.targets)}): "
                     f"{lo.params:,} params, fp32")
        lines.append(f"  {'weights':<30}{gib(lo.weights):>8}")
        lines.append(f"  {'gradients':<30}{gib(lo.grads):>8}")
        lines.append(f"  {'AdamW moments':<30}{gib(lo.optimizer):>8}")
        if lo.master:
            lines.append(f"  {'DeepSpeed fp32 master':<30}{gib(lo.master):>8}")
        a = self.activations
        ctx = f" + {a.context_tokens:,} text" if a.context_tokens else ""
        lines.append(f"activations (ESTIMATE; {a.tokens:,} tokens{ctx} x hidden {a.hidden} x {a.layers} "
                     f"blocks, {a.bytes_per_element} B/elem):")
        for label, value, on in (("without checkpointing", a.without_checkpointing, not a.checkpointing),
                                 ("with checkpointing", a.with_checkpointing, a.checkpointing)):
            lines.append(f"  {label:<30}{gib(value):>8}  {'<- used' if on else ''}".rstrip())
        if self.zero3_gather:
            lines.append(f"  {'ZeRO-3 gathered block (est.)':<30}{gib(self.zero3_gather):>8}")
        lines.append(f"peak on the accelerator per rank (estimate): {gib(self.accelerator_peak())} GiB "
                     f"(resident components {gib(self.resident)}"
                     + (f" + largest offloaded encoder {gib(self.largest_offloaded)}" if self.largest_offloaded
                        else "")
                     + f" + LoRA state {gib(self.lora.total)} + activations {gib(a.used)}"
                     + (f" + ZeRO-3 gather {gib(self.zero3_gather)}" if self.zero3_gather else "") + ")")
        lines.append(f"CPU RAM per rank: {gib(self.cpu_ram)} GiB steady (offloaded encoders), "
                     f"{gib(self.cpu_ram_loading)} GiB while loading (the pipeline is read on the CPU first)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def zero_stage_of(cfg: RunConfig) -> Optional[int]:
    """The ZeRO stage the run will use; None without DeepSpeed.

    Same precedence as ``training.engines.zero.resolve_deepspeed_config`` (``deepspeed.zero_stage``
    over the JSON's ``zero_optimization.stage``, default 0), without importing DeepSpeed.
    """
    ds = cfg.deepspeed
    if ds.zero_stage is not None:
        return int(ds.zero_stage)
    if ds.config:
        try:
            return int(json.loads(Path(ds.config).read_text()).get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError):
            return 0  # the engine reports the broken file; the plan assumes stage 0
    return None


def plan_training(cfg: RunConfig, world_size: int = 1) -> MemoryPlan:
    """The memory plan of a training run on ``world_size`` ranks, from configs only.

    Call it before the engine exists (like ``training.preflight``): once accelerate has registered
    a ZeRO-3 config with transformers, building a transformers model (even on ``meta``) goes
    through ``deepspeed.zero.Init``.
    """
    m = cfg.model
    spec = get_spec(m.family)
    path = Path(m.path)
    dtypes = ComponentDtypes.from_model_config(m)
    stage = zero_stage_of(cfg)
    if stage is None and world_size > 1:
        stage = 0  # every multi-rank run goes through DeepSpeed (stage 0 = data parallel)

    # Training from a latent cache loads no VAE or text encoder: they are neither built nor counted.
    without = tuple(spec.encoder_components(path)) if cfg.data.cache else ()
    built = _components(path, spec, dtypes, without)
    components = [c for c, _ in built]
    for c in components:
        c.where = OFFLOADED if (m.offload_encoders and c.role in ("vae", "text")) else ACCELERATOR
    denoisers = [(c, module) for c, module in built if c.role == "denoiser"]
    if len(denoisers) != 1:
        raise ValueError(f"{path}: expected one denoiser component, found "
                         f"{[c.name for c, _ in denoisers] or 'none'}")
    den, denoiser = denoisers[0]

    # LoRA: shapes from the denoiser built on meta (no weights).
    tr_cfg = spec.read_component_config(path, den.name)
    targets = list(cfg.lora.target_modules or spec.default_lora_targets)
    shapes = lora_shapes(denoiser, targets)
    lora_params = sum(cfg.lora.rank * (i + o) for _, i, o in shapes)
    lora = lora_bytes(lora_params, cfg.lora.rank, targets, len(shapes), stage, world_size)

    # Activations (estimate).
    hidden, layers = denoiser_shape(tr_cfg)
    tokens = cfg.train.batch_size * latent_tokens(spec, path, cfg.data.width, cfg.data.height, cfg.data.frames)
    context = 0
    if "joint_attention_dim" in tr_cfg:  # MMDiT: the text tokens run through every block too
        max_text = cfg.data.max_text_length or spec.default_max_text_length
        context = cfg.train.batch_size * (_CLIP_TOKENS + max_text)
    act = estimate_activations(tokens, hidden, layers, DTYPES[m.mixed_precision].itemsize,
                               m.gradient_checkpointing, context)

    notes = []
    zero3_gather = 0
    if (stage or 0) >= 3 and world_size > 1:
        zero3_gather = math.ceil((den.bytes - den.buffer_bytes) / layers)
        notes.append("ZeRO-3 gathers each block's parameters whole for its forward/backward; one block "
                     "(denoiser parameters / blocks) is counted, prefetching can hold more")
    if m.offload_encoders:
        notes.append("offload_encoders: the largest encoder is counted on top of the denoiser step "
                     "(an upper bound: encoders are moved out before the forward)")
    notes.append("activations are an estimate (see training.memory_plan.estimate_activations); "
                 "not counted: CUDA context, allocator fragmentation, VAE/text encode working memory")
    return MemoryPlan(model_path=str(path), family=spec.name, dtypes=dtypes.to_dict(), world_size=world_size,
                      zero_stage=stage, offload_encoders=m.offload_encoders, batch_size=cfg.train.batch_size,
                      shape=(cfg.data.width, cfg.data.height, cfg.data.frames), components=components,
                      lora=lora, activations=act, zero3_gather=zero3_gather, notes=notes)


__all__ = ["ACTIVATION_CONSTANT", "ActivationEstimate", "ComponentBytes", "LoraBytes", "MemoryPlan",
           "count_module", "estimate_activations", "latent_tokens", "lora_bytes", "lora_shapes",
           "plan_components", "plan_training", "zero_stage_of"]
