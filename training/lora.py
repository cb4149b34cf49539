"""LoRA injection and adapter files (peft on the transformer only).

A checkpoint folder carries the adapter twice, each in the key layout of the library whose
*default* file name it uses, so both standard loaders work with no arguments:

- ``adapter_model.safetensors`` + ``adapter_config.json``: PEFT layout
  (``base_model.model.<module>.lora_A.weight``) for ``PeftModel.from_pretrained(transformer, dir)``.
- ``pytorch_lora_weights.safetensors``: diffusers layout (``transformer.<module>.lora_A.weight``)
  plus the LoRA config in the safetensors metadata (so alpha != rank survives), for
  ``pipe.load_lora_weights(dir)``.

Why two files: each library silently loads *nothing* from the other's layout (only a warning),
which is precisely the failure of field note 1. The tensors are identical; only names differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from peft import LoraConfig as PeftLoraConfig
from safetensors.torch import save_file

from .errors import LorabenchError

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_PREFIX = "base_model.model."
DIFFUSERS_PREFIX = "transformer."
ADAPTER_NAME = "default"


class LoraTargetError(LorabenchError, ValueError):
    """Requested LoRA target modules do not exist in the model."""


def peft_config(rank: int, alpha: float, dropout: float, targets: Iterable[str]) -> PeftLoraConfig:
    # init_lora_weights=True: A ~ kaiming, B = 0, so step 0 equals the base model exactly.
    return PeftLoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=sorted(set(targets)), init_lora_weights=True)


def is_target(name: str, targets: Iterable[str]) -> bool:
    """peft's rule for a list of target names: the module is named ``t`` or ends in ``.t``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def check_targets(model: torch.nn.Module, targets: Iterable[str]) -> None:
    """Every target must match a module of ``model``; else LoraTargetError listing the names there are."""
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in sorted(set(targets)) if not any(is_target(n, [t]) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise LoraTargetError(
            f"lora.target_modules {missing} match no module of {type(model).__name__}; "
            f"linear layer names available: {', '.join(leaves)}")


def inject_lora(model: torch.nn.Module, cfg: PeftLoraConfig, seed: int) -> list[str]:
    """Freeze ``model``, add a LoRA adapter, and return the names of adapted modules.

    LoRA A is initialised from ``seed`` (independent of the global RNG), and LoRA
    parameters are kept in fp32 whatever the base dtype: they are the trained master weights.
    """
    check_targets(model, cfg.target_modules)
    model.requires_grad_(False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model.add_adapter(cfg, adapter_name=ADAPTER_NAME)
    finally:
        torch.random.set_rng_state(state)
    adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n})
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            p.requires_grad_(True)
    return adapted


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def lora_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(adapter key, parameter) pairs, keyed like peft's state dict (``...to_q.lora_A.weight``).

    Names come from the bare model, never from a DDP/DeepSpeed wrapper, so no ``module.``
    prefix can leak into saved keys.
    """
    tag = f".{ADAPTER_NAME}."
    return [(n.replace(tag, "."), p) for n, p in model.named_parameters()
            if "lora_" in n and p.requires_grad]


def config_dict(cfg: PeftLoraConfig) -> dict[str, Any]:
    """JSON-safe peft config (sets -> sorted lists)."""
    out = {}
    for k, v in cfg.to_dict().items():
        out[k] = sorted(v) if isinstance(v, set) else v
    return out


def write_adapter(out_dir: Path, state: dict[str, torch.Tensor], cfg: PeftLoraConfig,
                  base_model_path: str) -> list[str]:
    """Write both adapter layouts into ``out_dir``; returns the file names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_json = config_dict(cfg)
    cfg_json["base_model_name_or_path"] = base_model_path
    save_file({PEFT_PREFIX + k: v for k, v in state.items()}, str(out_dir / PEFT_WEIGHTS),
              metadata={"format": "pt"})
    (out_dir / PEFT_CONFIG).write_text(json.dumps(cfg_json, indent=2, sort_keys=True))
    # diffusers rebuilds the LoraConfig (rank, alpha, targets) from "lora_adapter_metadata",
    # whose keys carry the component prefix like the tensors do ("transformer.lora_alpha").
    meta_cfg = {DIFFUSERS_PREFIX + k: v for k, v in cfg_json.items() if k != "base_model_name_or_path"}
    save_file({DIFFUSERS_PREFIX + k: v for k, v in state.items()}, str(out_dir / DIFFUSERS_WEIGHTS),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta_cfg, sort_keys=True)})
    return [PEFT_WEIGHTS, PEFT_CONFIG, DIFFUSERS_WEIGHTS]
