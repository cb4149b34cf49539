"""Loading a trained adapter into a pipeline for sampling, failing loudly on a partial match.

diffusers' ``load_lora_weights`` only *warns* when no key matches (field note 1: a LoRA that
silently did nothing). Here every adapted module in the file must be patched in the model, or
loading raises with the unmatched module names. (Dialect conversion and the full report come
with the adapter-truth work; this is the skeleton's strict path.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from .lora import DIFFUSERS_PREFIX, DIFFUSERS_WEIGHTS

ADAPTER_NAME = "lorabench"


class AdapterLoadError(RuntimeError):
    """The adapter could not be applied completely."""


@dataclass
class AdapterInfo:
    path: Path
    sha256: str
    modules: int
    scale: float


def adapter_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / DIFFUSERS_WEIGHTS
    if not p.is_file():
        raise AdapterLoadError(f"adapter not found: {p} (give a checkpoint folder or a "
                               f"{DIFFUSERS_WEIGHTS} file)")
    return p


def _adapter_modules(keys: list[str]) -> set[str]:
    return {k.split(".lora_A.")[0] for k in keys if ".lora_A." in k}


def load_adapter_for_sampling(pipe: Any, path: str | Path, scale: float = 1.0) -> AdapterInfo:
    f = adapter_file(path)
    with safe_open(str(f), framework="pt") as st:
        keys = list(st.keys())
    wanted = _adapter_modules(keys)
    if not wanted:
        raise AdapterLoadError(f"{f} holds no LoRA A/B tensors ({len(keys)} keys, e.g. {keys[:3]})")
    try:
        pipe.load_lora_weights(str(f.parent), weight_name=f.name, adapter_name=ADAPTER_NAME)
    except (ValueError, KeyError, RuntimeError) as e:  # e.g. peft's NoMatchingPeftModuleError
        raise AdapterLoadError(f"{f}: the adapter could not be applied to "
                               f"{type(pipe.transformer).__name__}: {e}") from e
    patched = {DIFFUSERS_PREFIX + n for n, m in pipe.transformer.named_modules()
               if hasattr(m, "lora_A") and ADAPTER_NAME in getattr(m, "lora_A", {})}
    unmatched = sorted(wanted - patched)
    if unmatched:
        raise AdapterLoadError(
            f"{f}: {len(unmatched)} of {len(wanted)} adapted modules were not applied to the model "
            f"(first: {unmatched[:5]}); the adapter's key layout or architecture does not match")
    pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    return AdapterInfo(path=f, sha256=digest, modules=len(wanted), scale=scale)
