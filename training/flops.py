"""FLOPs of one LoRA training sample, counted on the meta device, and the MFU they give.

The denoiser is built from its folder's config on ``meta`` (no weights, no memory, so a 14B
model costs nothing) and run forward and backward on meta inputs of the run's shapes under
torch's ``FlopCounterMode``. On meta, ``scaled_dot_product_attention`` runs its reference
(math) decomposition, so attention is counted as the matmuls it is; on CPU the fused kernel has
no FLOP formula and would be missed. The backward runs with frozen weights and an input that
needs its gradient: the activation gradients a LoRA step computes through the frozen base,
without the (tiny) LoRA weight gradients. No gradient checkpointing: these are *model* FLOPs
(PaLM's MFU convention), so recomputation does not raise the MFU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .config import RunConfig
from .models import get_spec
from .models.base import Conditions, ModelSpec
from .precision import component_role

#: Dense bf16/fp16 tensor-core peak per device, FLOP/s (vendor datasheets, without sparsity).
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
    "L40": 181e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12, "B200": 2250e12,
}


@dataclass
class StepFlops:
    forward: int          # one sample's denoiser forward
    backward: int         # its activation gradients through the frozen base
    tokens: int           # latent tokens per sample (the sequence the denoiser sees)

    @property
    def per_sample(self) -> int:
        return self.forward + self.backward

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_sample": self.per_sample}


def _denoiser_on_meta(spec: ModelSpec, path: Path, dtype: torch.dtype) -> torch.nn.Module:
    from .memory_plan import _meta_module
    index = spec.read_model_index(path)
    name = next(n for n in spec.components(path) if component_role(n) == "denoiser")
    library, class_name = index[name]
    return _meta_module(library, class_name, path / name, dtype)


def training_flops(cfg: RunConfig) -> StepFlops:
    """FLOPs of one training sample of ``cfg`` (its model, shape and text length)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_spec(cfg.model.family)
    path = Path(cfg.model.path)
    # Counted in fp32 whatever the run's precision: a FLOP count does not depend on the dtype, and
    # on meta there is no autocast to reconcile bf16 activations with the fp32 parameters that
    # diffusers' from_config creates (the run itself loads and casts them).
    dtype = torch.float32
    model = _denoiser_on_meta(spec, path, dtype)
    model.requires_grad_(False)
    max_text = cfg.data.max_text_length or spec.default_max_text_length
    shapes = spec.cache_shapes(path, cfg.data.width, cfg.data.height, cfg.data.frames, max_text)
    latent = torch.empty((1, *shapes["posterior.mean"][1]), device="meta", dtype=dtype, requires_grad=True)
    cond = Conditions({k.split(".", 1)[1]: torch.empty((1, *s), device="meta", dtype=dtype)
                       for k, (_, s) in shapes.items() if k.startswith("cond.")})
    # predict() reads the pipeline's config (Wan 2.2's expand_timesteps) and its transformer's.
    pipe = _PipelineView(json.loads((path / "model_index.json").read_text()), model)
    t = torch.full((1,), 500, device="meta", dtype=torch.long)
    with FlopCounterMode(display=False) as fwd:
        out = spec.predict(pipe, model, latent, t, cond)
    with FlopCounterMode(display=False) as bwd:
        out.float().sum().backward()
    from .memory_plan import latent_tokens
    return StepFlops(forward=int(fwd.get_total_flops()), backward=int(bwd.get_total_flops()),
                     tokens=latent_tokens(spec, path, cfg.data.width, cfg.data.height, cfg.data.frames))


class _PipelineView:
    """What ``ModelSpec.predict`` reads from a pipeline: its config and its transformer."""

    def __init__(self, config: dict[str, Any], transformer: torch.nn.Module) -> None:
        self.config, self.transformer = config, transformer


def peak_flops(device_name: Optional[str]) -> Optional[float]:
    """The dense bf16 peak of a known accelerator by (part of) its name; None when unknown (CPUs)."""
    if not device_name:
        return None
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):   # "GH200" before "H200"
        if key.lower() in device_name.lower():
            return PEAK_FLOPS[key]
    return None


def mfu(flops_per_sample: int, samples_per_s: float, devices: int, peak_per_device: Optional[float]
        ) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak (None without a peak)."""
    if not peak_per_device or devices < 1 or not samples_per_s:
        return None
    return flops_per_sample * samples_per_s / (devices * peak_per_device)
