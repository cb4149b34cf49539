"""Write an adapter in another dialect, tensors bit-identical and alpha preserved exactly.

Targets: ``comfyui`` (``diffusion_model.<module>.lora_down/lora_up/alpha``), ``kohya``
(``lora_unet_<module_with_underscores>.lora_down/lora_up/alpha``), ``diffusers`` (the
``pytorch_lora_weights.safetensors`` layout with the LoRA config in its metadata) and ``peft``
(``adapter_model.safetensors`` + ``adapter_config.json``). Formats without an alpha field get
a config with per-module ``alpha_pattern`` entries, so every module keeps its own alpha.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import save_file

from ..lora import config_dict
from .formats import DIFFUSERS_FILE, DIFFUSERS_META, PEFT_CONFIG, Adapter, open_adapter
from .load import denoiser, lora_config
from .names import describe_model
from .report import AdapterError, AdapterReport, build_report

FORMATS = ("comfyui", "kohya", "diffusers", "peft")
DEFAULT_FILES = {"comfyui": "lora_comfyui.safetensors", "kohya": "lora_kohya.safetensors",
                 "diffusers": DIFFUSERS_FILE}
PEFT_FILE = "adapter_model.safetensors"


def alpha_tensor(alpha: float) -> torch.Tensor:
    """A 0-d tensor holding ``alpha`` exactly: fp32 when it is representable, else fp64."""
    t = torch.tensor(alpha, dtype=torch.float32)
    return t if float(t) == alpha else torch.tensor(alpha, dtype=torch.float64)


def _target_file(out: Path, to: str) -> Path:
    path = out if out.suffix == ".safetensors" else out / DEFAULT_FILES[to]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _meta(adapter: Adapter) -> dict[str, str]:
    return {"format": "pt", "lorabench_converted_from": str(adapter.source),
            "lorabench_source_sha256": adapter.sha256}


def _low_rank(adapter: Adapter, rep: AdapterReport, prefix: str, sep_dots: bool,
              rename: Callable[[str], str]) -> dict[str, torch.Tensor]:
    out = {}
    for n in rep.matched:
        mod = adapter.modules[n]
        name = rename(n).replace(".", "_") if not sep_dots else rename(n)
        out[f"{prefix}{name}.lora_down.weight"] = mod.A.contiguous()
        out[f"{prefix}{name}.lora_up.weight"] = mod.B.contiguous()
        out[f"{prefix}{name}.alpha"] = alpha_tensor(rep.alphas[n])
    return out


def _write_comfyui(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str]) -> Path:
    path = _target_file(out, "comfyui")
    save_file(_low_rank(adapter, rep, "diffusion_model.", True, rename), str(path), metadata=_meta(adapter))
    return path


def _write_kohya(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str]) -> Path:
    path = _target_file(out, "kohya")
    save_file(_low_rank(adapter, rep, "lora_unet_", False, rename), str(path), metadata=_meta(adapter))
    return path


def _peft_layout(adapter: Adapter, rep: AdapterReport, prefix: str,
                 rename: Callable[[str], str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {}
    for n in rep.matched:
        mod = adapter.modules[n]
        tensors[f"{prefix}{rename(n)}.lora_A.weight"] = mod.A.contiguous()
        tensors[f"{prefix}{rename(n)}.lora_B.weight"] = mod.B.contiguous()
    for n in rep.full_tensors:
        tensors.update({f"{prefix}{rename(n)}.{p}": t.contiguous() for p, t in adapter.modules[n].full.items()})
    renamed = lambda d: {rename(k): v for k, v in d.items()}  # noqa: E731
    cfg = lora_config(renamed(rep.ranks), renamed(rep.alphas), rep.use_rslora,
                      [rename(n) for n in rep.full_tensors])
    return tensors, config_dict(cfg)


def _write_diffusers(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str]) -> Path:
    path = _target_file(out, "diffusers")
    tensors, cfg = _peft_layout(adapter, rep, "transformer.", rename)
    # diffusers rebuilds the LoraConfig from this metadata, keys prefixed by the component.
    meta = dict(_meta(adapter), **{DIFFUSERS_META: json.dumps({f"transformer.{k}": v for k, v in cfg.items()},
                                                              sort_keys=True)})
    save_file(tensors, str(path), metadata=meta)
    return path


def _write_peft(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str]) -> Path:
    if out.suffix == ".safetensors":
        raise AdapterError(f"{out}: the peft format is a folder ({PEFT_FILE} + {PEFT_CONFIG}); give a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors, cfg = _peft_layout(adapter, rep, "base_model.model.", rename)
    save_file(tensors, str(out / PEFT_FILE), metadata=_meta(adapter))
    (out / PEFT_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


WRITERS: dict[str, Callable[[Adapter, AdapterReport, Path, Callable[[str], str]], Path]] = {
    "comfyui": _write_comfyui, "kohya": _write_kohya, "diffusers": _write_diffusers, "peft": _write_peft}


def convert(path: str | Path, to: str, out: str | Path, model: Any = None,
            original_names: bool = False) -> Path:
    """Convert the adapter at ``path`` to dialect ``to``; returns the file (or peft folder) written.

    ``out``: a ``.safetensors`` path, or a folder (default file name per format; always a folder
    for peft). ``model`` (module or pipeline) resolves names first; required for kohya sources,
    whose underscored names can only be resolved against a model. ``original_names`` writes
    the family's original module names (``self_attn.q`` for Wan, what ComfyUI's native Wan
    loader and musubi-tuner expect) and needs ``model``.
    """
    if to not in WRITERS:
        raise AdapterError(f"unknown adapter format {to!r}: choose one of {', '.join(FORMATS)}")
    info = describe_model(denoiser(model)) if model is not None else None
    adapter = open_adapter(path, info)
    if "kohya" in adapter.dialect and info is None:
        raise AdapterError(f"{adapter.source}: kohya names (underscores for dots) can only be resolved against "
                           "the target model: pass model= (CLI: --model DIR)")
    rep = build_report(adapter, info)
    if rep.unexpected or not rep.matched:
        raise AdapterError(f"{adapter.source}: cannot convert: {len(rep.unexpected)} keys/modules are not "
                           f"understood or do not fit, {len(rep.matched)} usable modules; nothing was written.\n"
                           f"{rep.to_table(max_matched=10)}", rep)
    if rep.full_tensors and to in ("comfyui", "kohya"):
        raise AdapterError(f"{adapter.source}: holds full replacement tensors (modules_to_save: "
                           f"{', '.join(rep.full_tensors)}) that the {to} LoRA format cannot express; "
                           "convert to peft or diffusers instead")
    rename = _original_namer(info) if original_names else (lambda n: n)
    return WRITERS[to](adapter, rep, Path(out), rename)


def _original_namer(info: Optional[Any]) -> Callable[[str], str]:
    table = info.names if info is not None else None
    if table is None:
        family = info.class_name if info is not None else "no model given"
        raise AdapterError(f"original_names needs a model whose family registers a name table ({family})")
    return lambda n: table.to_original(n) or n
