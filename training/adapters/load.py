"""Load an adapter of any dialect into a model or pipeline: all of it, or an error with the table.

The injection is peft's (``inject_adapter_in_model`` + ``set_peft_model_state_dict``), the
same two calls diffusers' ``load_lora_weights`` makes, so a diffusers-layout file gives exactly
the model diffusers would give. What differs: names are normalised first, every key must land
on a module (or the load fails with the report), and after loading every tensor and scaling is
read back from the model and compared.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import AdapterError
from .formats import Adapter, open_adapter
from .names import describe_model
from .report import AdapterReport, build_report

log = logging.getLogger("lorabench.adapters")

# Pipeline attributes that hold the denoiser LoRAs patch, in order of preference.
DENOISER_ATTRS = ("transformer", "unet")
DEFAULT_ADAPTER_NAME = "lorabench"


def denoiser(model_or_pipeline: Any) -> torch.nn.Module:
    """The module to patch: the object itself if it is a module, else the pipeline's transformer/unet."""
    if isinstance(model_or_pipeline, torch.nn.Module):
        return model_or_pipeline
    for attr in DENOISER_ATTRS:
        m = getattr(model_or_pipeline, attr, None)
        if isinstance(m, torch.nn.Module):
            return m
    raise AdapterError(f"{type(model_or_pipeline).__name__} is neither a torch module nor a pipeline with "
                       f"one of {DENOISER_ATTRS}: pass the transformer itself")


def inspect_adapter(path: str | Path, model_or_pipeline: Any = None, scale: float = 1.0,
                    adapter_name: str = DEFAULT_ADAPTER_NAME) -> AdapterReport:
    """Report how the adapter at ``path`` fits the model (or describe it alone); changes nothing.

    Refuses only what cannot be read (bad files, invalid JSON, non-finite tensors); whether the
    fit is acceptable is ``report.ok``, and ``report.check(allow_partial, allow_inconsistent)``
    raises the same error :func:`load_adapter` would.
    """
    info = describe_model(denoiser(model_or_pipeline)) if model_or_pipeline is not None else None
    return build_report(open_adapter(path, info), info, scale, adapter_name)


def loaded_adapters(model: torch.nn.Module) -> set[str]:
    """Names of the LoRA adapters injected anywhere in ``model``."""
    return {name for m in model.modules() if hasattr(m, "lora_A") for name in m.lora_A.keys()}


def adapter_layers(model: torch.nn.Module, adapter_name: str) -> dict[str, torch.nn.Module]:
    """The peft LoRA layers of ``model`` that carry the adapter ``adapter_name``, by module name."""
    return {n: m for n, m in model.named_modules() if adapter_name in getattr(m, "lora_A", {})}


def load_adapter(model_or_pipeline: Any, path: str | Path, scale: float = 1.0, allow_partial: bool = False,
                 adapter_name: str = DEFAULT_ADAPTER_NAME, allow_inconsistent: bool = False) -> AdapterReport:
    """Inject the adapter at ``path`` (any dialect) and return its report.

    Raises :class:`AdapterError` (with the explained table in the message), and loads nothing, when:

    - a file cannot be read, a JSON file is invalid, or a tensor holds NaN/inf (always);
    - no tensor matches the model (always);
    - the fit is partial: a key does not fit the model, a module the adapter's config targets has
      no weights, or a module type is adapted in some blocks but not in others (a file covering
      block 0 of a 2-block model) -- unless ``allow_partial=True``;
    - the LoRA config disagrees with the tensors (rank, alpha, target_modules) -- unless
      ``allow_inconsistent=True``, which loads the tensors as they are with scale alpha / the
      tensors' own rank (never alpha / the config's r).

    Each accepted exception is logged as a warning and recorded in ``report.notes``. The
    effective update of each module is ``scale * alpha / r * B @ A``.
    """
    model = denoiser(model_or_pipeline)
    if adapter_name in loaded_adapters(model):
        raise AdapterError(f"an adapter named {adapter_name!r} is already loaded into {type(model).__name__}: "
                           "pass another adapter_name, or remove it first (model.delete_adapters)")
    info = describe_model(model)
    adapter = open_adapter(path, info)
    rep = build_report(adapter, info, scale, adapter_name)
    for note in rep.notes:
        if note.startswith("WARNING"):
            log.warning("%s: %s", adapter.source, note)
    rep.check(allow_partial, allow_inconsistent)
    if rep.inconsistent:
        log.warning("%s: loading despite %d config/tensor disagreements (allow_inconsistent=True):\n  %s",
                    adapter.source, len(rep.inconsistent), "\n  ".join(rep.inconsistent))
        rep.notes.append("config/tensor disagreements accepted (allow_inconsistent=True): the tensors are loaded "
                         "as they are, scale = alpha / the tensors' own rank")
    if rep.partial:
        log.warning("%s does not fully match %s (%d missing, %d unexpected, %d module types in only some blocks); "
                    "loading the %d matching modules (allow_partial=True)\n%s", adapter.source, info.class_name,
                    len(rep.missing), len(rep.unexpected), len(rep.coverage), len(rep.matched),
                    rep.to_table(max_matched=20))
        rep.notes.append("partial load (allow_partial=True): the missing/unexpected rows were not applied"
                         + ("; the blocks listed under partial coverage carry no adapter" if rep.coverage else ""))
    try:
        _inject(model, adapter, rep)
        _check_applied(model, adapter, rep)
    except Exception:
        _remove(model, adapter_name)  # never leave a half-loaded adapter behind
        raise
    rep.loaded = True
    log.info("adapter loaded: %s", rep.summary())
    return rep


def _exact(name: str) -> str:
    # peft matches rank/alpha patterns as regexes on a dot-boundary suffix: anchor and escape so
    # each entry hits exactly one module.
    return "^" + re.escape(name)


def lora_config(ranks: dict[str, int], alphas: dict[str, float], use_rslora: bool = False,
                full: Optional[list[str]] = None) -> Any:
    """A peft ``LoraConfig`` that gives every module exactly its own rank and alpha."""
    from peft import LoraConfig

    r0 = Counter(ranks.values()).most_common(1)[0][0]
    a0 = Counter(alphas.values()).most_common(1)[0][0]
    return LoraConfig(
        r=r0, lora_alpha=a0, lora_dropout=0.0, use_rslora=use_rslora,
        # A regex target is full-matched by peft; a list would also hit `x.<name>` submodules.
        target_modules="^(?:" + "|".join(re.escape(n) for n in sorted(ranks)) + ")$",
        rank_pattern={_exact(n): r for n, r in ranks.items() if r != r0},
        alpha_pattern={_exact(n): a for n, a in alphas.items() if a != a0},
        modules_to_save=sorted(full) if full else None)


def _inject(model: torch.nn.Module, adapter: Adapter, rep: AdapterReport) -> None:
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    name = rep.adapter_name
    cfg = lora_config(rep.ranks, rep.alphas, rep.use_rslora, rep.full_tensors)
    state: dict[str, torch.Tensor] = {}
    for m in rep.matched:
        mod = adapter.modules[m]
        state[f"{m}.lora_A.weight"], state[f"{m}.lora_B.weight"] = mod.A, mod.B
    for m in rep.full_tensors:
        state.update({f"{m}.{p}": t for p, t in adapter.modules[m].full.items()})
    dev = next(model.parameters()).device
    # peft initialises A (kaiming) before the copy: keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        inject_adapter_in_model(cfg, model, adapter_name=name)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    stray = [k for k in getattr(result, "unexpected_keys", []) if name in k or "lora_" in k]
    if stray:
        raise AdapterError(f"{adapter.source}: peft did not place {len(stray)} tensors (first: {stray[:3]})", rep)
    if hasattr(model, "_hf_peft_config_loaded"):  # diffusers' flag for set_adapters / disable_adapters
        model._hf_peft_config_loaded = True
    for m in adapter_layers(model, name).values():
        if hasattr(m, "set_scale"):
            m.set_scale(name, rep.scale)  # what diffusers' set_adapters(weights=[scale]) does


def unload_adapter(model_or_pipeline: Any, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
    """Remove a loaded adapter; the base weights were never modified, so the base model is back.

    Cheaper than reloading the pipeline: eval switches adapters on one resident base model.
    """
    model = denoiser(model_or_pipeline)
    if adapter_name not in loaded_adapters(model):
        raise AdapterError(f"no adapter named {adapter_name!r} is loaded into {type(model).__name__}")
    _remove(model, adapter_name)
    if not getattr(model, "peft_config", None):
        # An empty peft_config left behind makes peft warn about "multiple adapters" on the next load.
        if hasattr(model, "peft_config"):
            del model.peft_config
        if hasattr(model, "_hf_peft_config_loaded"):
            model._hf_peft_config_loaded = False
    if adapter_name in loaded_adapters(model):
        raise AdapterError(f"adapter {adapter_name!r} is still present after removal; please report this")


def _remove(model: torch.nn.Module, name: str) -> None:
    for m in adapter_layers(model, name).values():
        if hasattr(m, "delete_adapter"):
            m.delete_adapter(name)
    getattr(model, "peft_config", {}).pop(name, None)


def _check_applied(model: torch.nn.Module, adapter: Adapter, rep: AdapterReport) -> None:
    """Read every loaded tensor and scaling back from the model (field note 1: prove it)."""
    name = rep.adapter_name
    patched = set(adapter_layers(model, name))
    wrong = sorted(patched ^ set(rep.matched))
    for m in rep.matched:
        if m in wrong:
            continue
        layer, mod = model.get_submodule(m), adapter.modules[m]
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        if not (torch.equal(a, mod.A.to(a)) and torch.equal(b, mod.B.to(b))
                and abs(layer.scaling[name] - rep.scaling(m)) <= 1e-12 * abs(rep.scaling(m))):
            wrong.append(m)
    for m in rep.full_tensors:
        copies = getattr(model.get_submodule(m), "modules_to_save", None)  # peft ModulesToSaveWrapper
        copy = copies[name] if copies is not None and name in copies else None
        if copy is None or any(not torch.equal(getattr(copy, p), t.to(getattr(copy, p)))
                               for p, t in adapter.modules[m].full.items()):
            wrong.append(m)
    if wrong:
        raise AdapterError(f"{adapter.source}: after loading, {len(wrong)} modules do not hold the file's "
                           f"tensors or scaling (first: {wrong[:5]}); this is a loader bug, please report it", rep)
