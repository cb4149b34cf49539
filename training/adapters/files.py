"""Adapter file layouts: file names, key prefixes and metadata keys, defined once, and the two writers.

lorabench writes the PEFT and the diffusers layouts (a checkpoint carries both, see
:mod:`training.lora`; ``convert`` writes either) and reads every dialect (:mod:`.formats`):

- PEFT: ``adapter_model.safetensors`` (``base_model.model.<module>.lora_A.weight``) +
  ``adapter_config.json``, for ``PeftModel.from_pretrained(transformer, dir)``.
- diffusers: ``pytorch_lora_weights.safetensors`` (``transformer.<module>.lora_A.weight``) with
  the LoRA config in the safetensors metadata (so alpha != rank survives), for
  ``pipe.load_lora_weights(dir)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save, save_file

from ..fsio import atomic_write_bytes, atomic_write_text

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"       # PeftModel.save_pretrained(safe_serialization=False)
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
DIFFUSERS_META = "lora_adapter_metadata"     # safetensors metadata key holding the LoRA config

PEFT_PREFIX = "base_model.model."
DIFFUSERS_PREFIX = "transformer."
COMFYUI_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"
DENOISER_PREFIXES = (DIFFUSERS_PREFIX, "unet.")           # diffusers: the component patched
KOHYA_PREFIXES = (KOHYA_PREFIX, "lora_transformer_")


def config_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe peft ``LoraConfig`` (sets -> sorted lists)."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, atomic: bool) -> None:
    """Write a safetensors file.

    ``atomic``: through a temporary sibling and a rename, for a file written in place (readers see
    the old file or the new one). ``False`` inside a folder that is published by one rename (a
    checkpoint's temporary folder): streamed to disk, without a second copy of the tensors in memory.
    """
    if atomic:
        atomic_write_bytes(path, save(tensors, metadata=metadata))
    else:
        save_file(tensors, str(path), metadata=metadata)


def _save_text(path: Path, text: str, *, atomic: bool) -> None:
    if atomic:
        atomic_write_text(path, text)
    else:
        path.write_text(text)


def write_peft(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, str],
               *, atomic: bool = True) -> None:
    """The PEFT layout in ``folder``; ``tensors`` keyed by module (``<module>.lora_A.weight``)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / PEFT_WEIGHTS, {PEFT_PREFIX + k: v for k, v in tensors.items()}, metadata, atomic=atomic)
    _save_text(folder / PEFT_CONFIG, json.dumps(config, indent=2, sort_keys=True), atomic=atomic)


def write_diffusers(path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], metadata: dict[str, str],
                    *, atomic: bool = True) -> None:
    """The diffusers layout at ``path``; ``tensors`` keyed by module, ``config`` the LoRA config."""
    # diffusers rebuilds the LoraConfig (rank, alpha, targets) from this metadata, whose keys
    # carry the component prefix like the tensors do ("transformer.lora_alpha").
    meta = dict(metadata, **{DIFFUSERS_META: json.dumps({DIFFUSERS_PREFIX + k: v for k, v in config.items()},
                                                        sort_keys=True)})
    save_tensors(path, {DIFFUSERS_PREFIX + k: v for k, v in tensors.items()}, meta, atomic=atomic)
