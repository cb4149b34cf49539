"""Few-layer models at the real widths, for testing the shipped real configs on a CPU.

Tiny fp32 models hide dtype and size bugs (an fp32 norm that drifts on a 3072x14336 layer, an
input dtype taken from an fp32-kept table). These folders keep everything that decides dtypes
and sizes of the released models and shrink only what costs time without changing that:

- the denoiser: the released config (``real_configs``), ``layers`` transformer blocks;
- the VAE and the scheduler: the released configs, unchanged;
- text encoders: the released class with its real **output** width (umT5/T5 4096, CLIP-L 768,
  CLIP-G 1280) but one layer, two heads and the tiny caption vocabulary of ``tiny_text``.

Weights are random (seeded); folders are standard diffusers folders, loaded back through the
same ``from_pretrained`` path as a real checkout.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from .real_configs import FAMILY, REAL_CONFIGS, real_config, write_config_folder
from .tiny_text import clip_tokenizer, t5_tokenizer

#: the folder names of the released diffusers checkouts (what configs put in model.path) -> model
KNOWN_FOLDERS: dict[str, str] = {
    "Wan2.2-TI2V-5B-Diffusers": "wan2.2-ti2v-5b",
    "Wan2.1-T2V-1.3B-Diffusers": "wan2.1-t2v-1.3b",
    "stable-diffusion-3.5-medium": "sd3.5-medium",
}


def real_name_for(model_path: str) -> str:
    """The real model a config's ``model.path`` points at (by its folder name)."""
    name = Path(model_path).name
    if name not in KNOWN_FOLDERS:
        raise KeyError(f"model.path {model_path!r}: folder {name!r} is not a known released model; add it to "
                       f"training.models.real_geometry.KNOWN_FOLDERS and its configs to real_configs.REAL_CONFIGS "
                       f"(known: {', '.join(sorted(KNOWN_FOLDERS))})")
    return KNOWN_FOLDERS[name]


def _tiny_text_encoder(cls_name: str, cfg: dict[str, Any]) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, cls_name)
    config_cls = cls.config_class
    if cls_name.startswith("CLIP"):
        small = dict(cfg, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=256,
                     bos_token_id=0, eos_token_id=1, pad_token_id=1)
    else:  # T5 / umT5: d_model (the output width) kept
        small = dict(cfg, num_layers=1, num_decoder_layers=1, num_heads=2, d_ff=64, vocab_size=128,
                     relative_attention_num_buckets=8, dropout_rate=0.0)
    small = {k: v for k, v in small.items() if k not in ("architectures", "model_type", "_class_name")}
    return cls(config_cls(**small))


def _tokenizer(cls_name: str) -> Any:
    return clip_tokenizer() if cls_name.startswith("CLIP") else t5_tokenizer()


def make_real_geometry(name: str, out: str | Path, layers: int = 1, seed: int = 0) -> Path:
    """Write a ``layers``-block, real-width random model folder for ``name`` (see REAL_CONFIGS)."""
    import diffusers

    if name not in REAL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REAL_CONFIGS))}")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config_folder(name, tmp, layers=layers)  # the released configs, fewer blocks
        data = real_config(name)
        index = data["model_index"]
        torch.manual_seed(seed)
        parts: dict[str, Any] = {}
        for comp, entry in index.items():
            if comp.startswith("_") or not isinstance(entry, list) or entry[0] is None:
                continue
            lib, cls_name = entry
            if comp.startswith("tokenizer"):
                parts[comp] = _tokenizer(cls_name)
            elif comp.startswith("text_encoder"):
                parts[comp] = _tiny_text_encoder(cls_name, data["components"][comp])
            elif comp == "scheduler":
                cls = getattr(diffusers, cls_name)
                parts[comp] = cls.from_config(cls.load_config(str(folder / comp)))
            else:  # denoiser and VAE at their released configs
                cls = getattr(diffusers, cls_name)
                parts[comp] = cls.from_config(cls.load_config(str(folder / comp)))
        pipe_cls = getattr(diffusers, index["_class_name"])
        extra = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
        if "transformer_2" in index:
            parts["transformer_2"] = None
        pipe = pipe_cls(**parts, **{k: v for k, v in extra.items() if k in _init_args(pipe_cls)})
        pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def _init_args(cls: type) -> set[str]:
    import inspect
    return set(inspect.signature(cls.__init__).parameters)


__all__ = ["FAMILY", "KNOWN_FOLDERS", "make_real_geometry", "real_name_for"]
