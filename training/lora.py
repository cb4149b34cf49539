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
The file names, prefixes and writers are :mod:`training.adapters.files`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from peft import LoraConfig as PeftLoraConfig

from .adapters.files import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS, config_dict, write_diffusers, write_peft
from .errors import LorabenchError

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


def write_adapter(out_dir: Path, state: dict[str, torch.Tensor], cfg: PeftLoraConfig,
                  base_model_path: str) -> list[str]:
    """Write both adapter layouts into ``out_dir``; returns the file names written.

    ``out_dir`` is a checkpoint's temporary folder, published whole by one rename, so the files
    are streamed into it rather than each written atomically.
    """
    cfg_json = config_dict(cfg)
    cfg_json.pop("base_model_name_or_path", None)  # recorded in the PEFT config only, not the diffusers metadata
    write_peft(out_dir, state, dict(cfg_json, base_model_name_or_path=base_model_path), {"format": "pt"},
               atomic=False)
    write_diffusers(out_dir / DIFFUSERS_WEIGHTS, state, cfg_json, {"format": "pt"}, atomic=False)
    return [PEFT_WEIGHTS, PEFT_CONFIG, DIFFUSERS_WEIGHTS]
