"""Write an adapter in another dialect, tensors bit-identical and alpha preserved exactly.

Targets: ``comfyui`` (``diffusion_model.<module>.lora_down/lora_up/alpha``), ``kohya``
(``lora_unet_<module_with_underscores>.lora_down/lora_up/alpha``), ``diffusers`` (the
``pytorch_lora_weights.safetensors`` layout with the LoRA config in its metadata) and ``peft``
(``adapter_model.safetensors`` + ``adapter_config.json``). Formats without an alpha field get
a config with per-module ``alpha_pattern`` entries, so every module keeps its own alpha.

comfyui and kohya files get the family's original module names by default (Wan:
``blocks.N.self_attn.q``), which ComfyUI, musubi-tuner and diffusers' own Wan loader expect;
diffusers and peft files get diffusers names (``original_names`` overrides either way).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .errors import AdapterError
from .files import (COMFYUI_PREFIX, DIFFUSERS_WEIGHTS, KOHYA_PREFIX, PEFT_CONFIG, PEFT_WEIGHTS, config_dict,
                    save_tensors, write_diffusers, write_peft)
from .formats import Adapter, open_adapter
from .load import denoiser, lora_config
from .names import NAME_TABLES, ModelInfo, describe_model, family_from_names
from .report import AdapterReport, build_report

FORMATS = ("comfyui", "kohya", "diffusers", "peft")
# Formats whose users (ComfyUI's native loaders, musubi-tuner, diffusers' own Wan converter for
# `diffusion_model.` / `lora_unet_` files) expect the family's original module names.
ORIGINAL_NAMES_BY_DEFAULT = ("comfyui", "kohya")
NAMES_META = "lorabench_module_names"
DEFAULT_FILES = {"comfyui": "lora_comfyui.safetensors", "kohya": "lora_kohya.safetensors",
                 "diffusers": DIFFUSERS_WEIGHTS}


def alpha_tensor(alpha: float) -> torch.Tensor:
    """A 0-d tensor holding ``alpha`` exactly: fp32 when it is representable, else fp64."""
    t = torch.tensor(alpha, dtype=torch.float32)
    return t if float(t) == alpha else torch.tensor(alpha, dtype=torch.float64)


def _target_file(out: Path, to: str) -> Path:
    path = out if out.suffix == ".safetensors" else out / DEFAULT_FILES[to]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class Namer:
    """Module name in the file to write, from the name in the adapter; ``description`` says which naming."""

    def __init__(self, rename: Callable[[str], str], description: str):
        self.rename, self.description = rename, description

    def __call__(self, name: str) -> str:
        return self.rename(name)


def _meta(adapter: Adapter, rename: Callable[[str], str]) -> dict[str, str]:
    meta = {"format": "pt", "lorabench_converted_from": str(adapter.source), "lorabench_source_sha256": adapter.sha256}
    if isinstance(rename, Namer):
        meta[NAMES_META] = rename.description
    return meta


def _write_low_rank(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str], *,
                    to: str, prefix: str, sep_dots: bool) -> Path:
    """comfyui / kohya: ``<prefix><module>.lora_down/lora_up/alpha`` (kohya: dots of the name as underscores)."""
    tensors = {}
    for n in rep.matched:
        mod = adapter.modules[n]
        name = rename(n).replace(".", "_") if not sep_dots else rename(n)
        tensors[f"{prefix}{name}.lora_down.weight"] = mod.A.contiguous()
        tensors[f"{prefix}{name}.lora_up.weight"] = mod.B.contiguous()
        tensors[f"{prefix}{name}.alpha"] = alpha_tensor(rep.alphas[n])
    path = _target_file(out, to)
    save_tensors(path, tensors, _meta(adapter, rename), atomic=True)
    return path


def _peft_layout(adapter: Adapter, rep: AdapterReport,
                 rename: Callable[[str], str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors keyed by module (the writers add the layout's prefix) and the LoRA config."""
    tensors = {}
    for n in rep.matched:
        mod = adapter.modules[n]
        tensors[f"{rename(n)}.lora_A.weight"] = mod.A.contiguous()
        tensors[f"{rename(n)}.lora_B.weight"] = mod.B.contiguous()
    for n in rep.full_tensors:
        tensors.update({f"{rename(n)}.{p}": t.contiguous() for p, t in adapter.modules[n].full.items()})
    renamed = lambda d: {rename(k): v for k, v in d.items()}  # noqa: E731
    cfg = lora_config(renamed(rep.ranks), renamed(rep.alphas), rep.use_rslora,
                      [rename(n) for n in rep.full_tensors])
    return tensors, config_dict(cfg)


def _write_diffusers(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str]) -> Path:
    path = _target_file(out, "diffusers")
    write_diffusers(path, *_peft_layout(adapter, rep, rename), _meta(adapter, rename))
    return path


def _write_peft(adapter: Adapter, rep: AdapterReport, out: Path, rename: Callable[[str], str]) -> Path:
    if out.suffix == ".safetensors":
        raise AdapterError(f"{out}: the peft format is a folder ({PEFT_WEIGHTS} + {PEFT_CONFIG}); give a folder")
    write_peft(out, *_peft_layout(adapter, rep, rename), _meta(adapter, rename))
    return out


WRITERS: dict[str, Callable[[Adapter, AdapterReport, Path, Callable[[str], str]], Path]] = {
    "comfyui": functools.partial(_write_low_rank, to="comfyui", prefix=COMFYUI_PREFIX, sep_dots=True),
    "kohya": functools.partial(_write_low_rank, to="kohya", prefix=KOHYA_PREFIX, sep_dots=False),
    "diffusers": _write_diffusers, "peft": _write_peft}


def convert(path: str | Path, to: str, out: str | Path, model: Any = None,
            original_names: Optional[bool] = None, allow_inconsistent: bool = False) -> Path:
    """Convert the adapter at ``path`` to dialect ``to``; returns the file (or peft folder) written.

    ``out``: a ``.safetensors`` path, or a folder (default file name per format; always a folder
    for peft). ``model`` (module or pipeline) resolves names first; required for kohya sources,
    whose underscored names can only be resolved against a model.

    ``original_names``: ``True`` writes the family's original module names (``blocks.N.self_attn.q``
    for Wan), ``False`` diffusers names (``blocks.N.attn1.to_q``); ``None`` (default) picks original
    names for comfyui and kohya (what ComfyUI, musubi-tuner and diffusers' own Wan loader expect
    from those files) and diffusers names for diffusers and peft. The family comes from ``model``,
    else from a lorabench checkpoint's manifest, else from the module names (the name tables are
    exact templates); a family without a name table keeps the names as they are. The naming used
    is recorded in the file's metadata (``lorabench_module_names``).

    A config that disagrees with the tensors is refused unless ``allow_inconsistent=True`` (the
    tensors are then written with alpha / their own rank, in a config that agrees with them).
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
    if rep.inconsistent and not allow_inconsistent:
        raise AdapterError(f"{adapter.source}: cannot convert: its LoRA config disagrees with its tensors "
                           f"({len(rep.inconsistent)} problem(s) below); nothing was written. Fix the config, or "
                           "pass allow_inconsistent=True (CLI: --allow-inconsistent) to write the tensors as they "
                           "are (scale = alpha / their own rank).\n" + "\n".join(f"  {x}" for x in rep.inconsistent),
                           rep)
    if rep.full_tensors and to in ("comfyui", "kohya"):
        raise AdapterError(f"{adapter.source}: holds full replacement tensors (modules_to_save: "
                           f"{', '.join(rep.full_tensors)}) that the {to} LoRA format cannot express; "
                           "convert to peft or diffusers instead")
    return WRITERS[to](adapter, rep, Path(out), export_namer(adapter, info, to, original_names, rep.matched))


def export_namer(adapter: Adapter, info: Optional[ModelInfo], to: str, original_names: Optional[bool],
                 names: list[str]) -> Namer:
    """The module names ``convert`` writes (see its ``original_names``)."""
    want_original = to in ORIGINAL_NAMES_BY_DEFAULT if original_names is None else original_names
    if info is not None:
        family, how = info.family, f"family of {info.class_name}"
    else:
        family = ((adapter.manifest or {}).get("base_model") or {}).get("family")
        how = "family from the checkpoint manifest"
        if family not in NAME_TABLES:
            family, how = family_from_names(names), "family recognised from the module names"
    table = NAME_TABLES.get(family) if family else None
    if table is None:
        if original_names:
            what = info.class_name if info is not None else "no model given, and the names match no family's table"
            raise AdapterError(f"{adapter.source}: original module names need a model family that registers a name "
                               f"table ({what}); pass model= (CLI: --model DIR) or drop original_names")
        return Namer(lambda n: n, "as in the source (no original naming is registered for this model)")
    rename = (lambda n: table.to_original(n) or n) if want_original else (lambda n: table.to_model(n) or n)
    example = rename(names[0]) if names else ""
    kind = f"original {family}" if want_original else "diffusers"
    return Namer(rename, f"{kind} naming ({how}), e.g. `{example}`")


def written_naming(written: Path) -> Optional[str]:
    """The module naming ``convert`` recorded in the file it wrote (a peft folder: its tensor file)."""
    from safetensors import safe_open
    f = written / PEFT_WEIGHTS if written.is_dir() else written
    with safe_open(str(f), framework="pt") as st:
        return (st.metadata() or {}).get(NAMES_META) or None
