"""Module names of target models: per-family rename tables and a weight-free model description.

Original checkpoints of a family (the official Wan repo; DiffSynth, ComfyUI and musubi-tuner
files made from it) name modules differently from diffusers. Each family has one table in
:data:`NAME_TABLES` here; nothing else branches on the family. Also the module-name helpers the
reader and the report share (natural sort, block index).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

# peft wrapper module names that must not be mistaken for model modules.
_PEFT_SEGMENTS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B",
                  "lora_magnitude_vector", "modules_to_save", "original_module"}


# ------------------------------------------------------------------ per-family name tables


@dataclass(frozen=True)
class NameTable:
    """Original-checkpoint module names <-> diffusers module names for one model family.

    ``pairs`` are (original, diffusers) templates; ``{i}`` stands for a block index.
    """

    model_classes: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]

    def _map(self, name: str, reverse: bool) -> Optional[str]:
        for pat, repl in _compile(self.pairs, reverse):
            if pat.match(name):
                return pat.sub(repl, name)
        return None

    def to_model(self, name: str) -> Optional[str]:
        return self._map(name, reverse=False)

    def to_original(self, name: str) -> Optional[str]:
        return self._map(name, reverse=True)


@functools.lru_cache(maxsize=None)
def _compile(pairs: tuple[tuple[str, str], ...], reverse: bool) -> list[tuple[re.Pattern, str]]:
    out = []
    for orig, diff in pairs:
        src, dst = (diff, orig) if reverse else (orig, diff)
        out.append((re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst.replace("{i}", r"\1")))
    return out


# The official Wan repo (and DiffSynth / ComfyUI / musubi-tuner files made from it) names
# modules differently from diffusers; same table as diffusers' own Wan LoRA converter.
_WAN = NameTable(
    model_classes=("WanTransformer3DModel",),
    pairs=tuple([(f"blocks.{{i}}.self_attn.{o}", f"blocks.{{i}}.attn1.{d}")
                 for o, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))]
                + [(f"blocks.{{i}}.cross_attn.{o}", f"blocks.{{i}}.attn2.{d}")
                   for o, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"),
                                ("k_img", "add_k_proj"), ("v_img", "add_v_proj"))]
                + [("blocks.{i}.ffn.0", "blocks.{i}.ffn.net.0.proj"), ("blocks.{i}.ffn.2", "blocks.{i}.ffn.net.2"),
                   ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
                   ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
                   ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
                   ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
                   ("time_projection.1", "condition_embedder.time_proj"), ("head.head", "proj_out"),
                   ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
                   ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2")]))

NAME_TABLES: dict[str, NameTable] = {"wan": _WAN}


def family_of(model_class: str) -> Optional[str]:
    return next((f for f, t in NAME_TABLES.items() if model_class in t.model_classes), None)


def family_from_names(names: Iterable[str]) -> Optional[str]:
    """The one registered family whose name table maps some of ``names`` (either way), else None.

    The tables are exact per-block templates (``blocks.{i}.attn1.to_q``), so a match identifies
    the family; names no table maps, or names two tables map, give None.
    """
    names = list(names)
    hits = [f for f, t in NAME_TABLES.items() if any(t.to_original(n) or t.to_model(n) for n in names)]
    return hits[0] if len(hits) == 1 else None


# ------------------------------------------------------------------ target model description


@dataclass
class LayerShape:
    kind: str            # class name: Linear, Conv2d, ...
    in_features: int
    out_features: int

    def describe(self) -> str:
        return f"{self.kind}(in={self.in_features},out={self.out_features})"


@dataclass
class ModelInfo:
    """What name resolution and the report need to know about the target model (no weights)."""

    class_name: str
    family: Optional[str]
    layers: dict[str, LayerShape]            # LoRA-able modules (Linear / Conv)
    others: dict[str, str]                   # every other module -> class name
    params: dict[str, tuple[int, ...]]       # base parameter name -> shape
    blocks: Optional[int]
    config_file: Optional[Path] = None       # the model's config.json, when loaded from a folder

    @property
    def names(self) -> Optional[NameTable]:
        """The family's original<->diffusers name table, if it registered one."""
        return NAME_TABLES.get(self.family) if self.family else None


def _base_name(name: str) -> Optional[str]:
    """Model naming of a (possibly peft-wrapped) module or parameter name; None for adapter parts."""
    parts = [p for p in name.split(".") if p not in ("base_layer", "original_module")]
    return None if any(p in _PEFT_SEGMENTS for p in parts) else ".".join(parts)


def natural_key(name: str) -> list[Any]:
    """Sort key putting blocks.2 before blocks.10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


_BLOCK = re.compile(r"^blocks[._](\d+)[._]")


def block_index(name: str) -> Optional[int]:
    """N of a module named ``blocks.N.`` (or kohya ``blocks_N_``), else None."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def block_count(names: Iterable[str]) -> Optional[int]:
    """Number of ``blocks.N.`` (or kohya ``blocks_N_``) blocks named, from the highest index."""
    idx = [i for n in names if (i := block_index(n)) is not None]
    return max(idx) + 1 if idx else None


def describe_model(model: torch.nn.Module) -> ModelInfo:
    """Module names and shapes of ``model``, ignoring peft wrappers already injected."""
    layers: dict[str, LayerShape] = {}
    others: dict[str, str] = {}
    for name, m in model.named_modules():
        base = _base_name(name)
        if not base or base in layers:
            continue
        if hasattr(m, "get_base_layer"):  # a peft tuner layer: describe what it wraps
            m = m.get_base_layer()
        if isinstance(m, torch.nn.Linear):
            layers[base] = LayerShape("Linear", m.in_features, m.out_features)
            others.pop(base, None)  # a peft wrapper seen first under the same name
        elif isinstance(m, torch.nn.modules.conv._ConvNd):
            layers[base] = LayerShape(type(m).__name__, m.in_channels, m.out_channels)
            others.pop(base, None)
        else:
            others.setdefault(base, type(m).__name__)
    params = {b: tuple(p.shape) for n, p in model.named_parameters() if (b := _base_name(n))}
    cls = type(model).__name__
    # diffusers records the folder a model was loaded from; the manifest check needs its config.
    config = getattr(model, "config", None)
    src = config.get("_name_or_path") if isinstance(config, dict) else None
    cfg = Path(src) / "config.json" if src else None
    return ModelInfo(cls, family_of(cls), layers, others, params, block_count(layers),
                     cfg if cfg is not None and cfg.is_file() else None)
