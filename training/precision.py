"""Which dtype each pipeline component is loaded in, decided once from the config.

A diffusion pipeline is three kinds of module with different precision needs:

- the **denoiser** (transformer/unet): frozen base weights in the compute dtype (bf16 on GPUs),
  except the modules diffusers keeps in fp32 (``_keep_in_fp32_modules``, e.g. Wan's
  ``scale_shift_table`` and norms), which loading with a dtype honours and a blanket
  ``.to(dtype)`` would destroy;
- the **VAE**: fp32 by default. Wan's reference VAE runs in fp32 and diffusers' Wan docs load
  ``AutoencoderKLWan`` with ``torch_dtype=torch.float32`` next to a bf16 pipeline;
- the **text encoder(s)**: the compute dtype unless set (Wan's reference runs umT5 in bf16,
  ``t5_dtype = torch.bfloat16`` in ``wan/configs/shared_config.py``).

LoRA weights are not a component: they are created (training) or loaded (peft upcasts adapters
on half-precision layers) in fp32, and stay the fp32 masters under every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

#: pipeline attribute prefixes -> role
_ROLE_PREFIXES = (("transformer", "denoiser"), ("unet", "denoiser"), ("vae", "vae"),
                  ("text_encoder", "text"), ("image_encoder", "text"))


def component_role(name: str) -> Optional[str]:
    """'denoiser' | 'vae' | 'text' for a pipeline component name; None for non-modules."""
    for prefix, role in _ROLE_PREFIXES:
        if name == prefix or name.startswith(prefix + "_"):
            return role
    return None


@dataclass(frozen=True)
class ComponentDtypes:
    """dtype names per role (``fp32`` | ``bf16`` | ``fp16``)."""

    denoiser: str = "fp32"
    vae: str = "fp32"
    text: str = "fp32"

    @classmethod
    def resolve(cls, denoiser: str, vae: str = "fp32", text: Optional[str] = None) -> "ComponentDtypes":
        for name in (denoiser, vae, text or denoiser):
            if name not in DTYPES:
                raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
        return cls(denoiser=denoiser, vae=vae, text=text or denoiser)

    @classmethod
    def from_model_config(cls, model_cfg) -> "ComponentDtypes":  # training.config.ModelConfig
        return cls.resolve(model_cfg.mixed_precision, model_cfg.vae_dtype, model_cfg.text_encoder_dtype)

    def name_for(self, component: str) -> str:
        role = component_role(component)
        return getattr(self, role) if role else self.denoiser

    def dtype_for(self, component: str) -> torch.dtype:
        return DTYPES[self.name_for(component)]

    def for_pipeline(self, components: Iterable[str]) -> dict[str, torch.dtype]:
        """The ``dtype=`` mapping for ``DiffusionPipeline.from_pretrained`` (per component)."""
        out = {c: self.dtype_for(c) for c in components if component_role(c)}
        out["default"] = DTYPES[self.denoiser]
        return out

    def to_dict(self) -> dict[str, str]:
        return {"denoiser": self.denoiser, "vae": self.vae, "text": self.text}


def kept_in_fp32(model: torch.nn.Module) -> Callable[[str], bool]:
    """``name -> bool``: does diffusers keep this parameter in fp32 whatever the load dtype?

    diffusers' rule: a *segment* of the dotted name is in the class's ``_keep_in_fp32_modules``.
    """
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return lambda name: bool(keep) and any(k in name.split(".") for k in keep)


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model's inputs must have: the dtype of its weights outside the fp32-kept modules.

    ``next(model.parameters())`` is wrong for models that keep some modules in fp32 (Wan's first
    parameter is the fp32 ``scale_shift_table``); diffusers' ``ModelMixin.dtype`` skips them.
    LoRA parameters (fp32 masters) are skipped too.
    """
    kept = kept_in_fp32(model)
    counts: dict[torch.dtype, int] = {}
    for name, p in model.named_parameters():
        if not p.is_floating_point() or "lora_" in name or kept(name):
            continue
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        return torch.float32
    return max(counts, key=counts.get)  # the dtype most weights have


def dtype_census(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Parameter counts per dtype, frozen and trainable apart (``result.json``, tests).

    Proves what ran: e.g. bf16 frozen weights, fp32 kept modules, fp32 LoRA masters.
    """
    out: dict[str, dict[str, int]] = {"frozen": {}, "trainable": {}}
    for name, p in model.named_parameters():
        part = out["trainable" if p.requires_grad else "frozen"]
        t = getattr(p, "ds_tensor", None)  # ZeRO-3: the partition holds the real dtype and size
        n = p.ds_numel if t is not None and hasattr(p, "ds_numel") else p.numel()
        key = DTYPE_NAMES.get(p.dtype, str(p.dtype))
        part[key] = part.get(key, 0) + n
    return out


def kept_fp32_dtypes(model: torch.nn.Module) -> dict[str, str]:
    """dtype of every parameter inside the model's ``_keep_in_fp32_modules`` (name -> dtype)."""
    kept = kept_in_fp32(model)
    return {n: DTYPE_NAMES.get(p.dtype, str(p.dtype)) for n, p in model.named_parameters()
            if "lora_" not in n and kept(n)}


def accept_any_float_input(module: torch.nn.Module) -> torch.nn.Module:
    """Cast floating-point positional inputs of ``module`` to its own weight dtype.

    For a component kept in another dtype than the pipeline's (an fp32 VAE next to a bf16
    denoiser): WanPipeline casts latents to ``vae.dtype`` before decoding, but
    StableDiffusion3Pipeline passes the denoiser's bf16 latents straight to the decoder's first
    conv ("Input type (BFloat16) and bias type (float) should be the same").
    """
    dtype = next(module.parameters()).dtype

    def cast(_mod: torch.nn.Module, args: tuple) -> tuple:
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    module.register_forward_pre_hook(cast)
    return module
