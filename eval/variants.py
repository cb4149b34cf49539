"""Variants: the base model, and each adapter (file, checkpoint, or every checkpoint of a run) at each scale.

Resolved on the driver before any model loads: each adapter file is read once for its sha256
(the identity every sample record carries), and checkpoints trained at other settings than
the eval samples at are reported (field note 3).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from training.config import ConfigError
from training.layout import CKPT_CONFIG, MANIFEST, STEP_DIR, RunLayout

from .config import AdapterEntry, EvalConfig

BASE = "base"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


@dataclass
class Variant:
    name: str                       # folder name under samples/: "base" or "<adapter>@<scale>"
    adapter: Optional[str] = None   # absolute path of the adapter file or checkpoint folder
    scale: Optional[float] = None
    step: Optional[int] = None      # training step, for checkpoints
    sha256: Optional[str] = None    # of the adapter tensor file
    group: Optional[str] = None     # the adapter entry it came from (one run -> many steps)
    allow_partial: bool = False     # load it although it covers some blocks only (variants.adapters[])
    allow_inconsistent: bool = False  # load it although its config disagrees with its tensors
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Variant":
        return cls(**d)


def resolve_variants(cfg: EvalConfig) -> list[Variant]:
    """Every variant in a fixed order: base first, then adapters in config order, steps ascending."""
    out = [Variant(BASE)] if cfg.variants.base else []
    for i, entry in enumerate(cfg.variants.adapters):
        for label, path, step in _expand(entry, f"variants.adapters[{i}]"):
            sha = _adapter_sha256(path, f"variants.adapters[{i}]")
            notes = _training_mismatch(path, cfg)
            for scale in cfg.variants.scales:
                name = _UNSAFE.sub("_", f"{label}@{scale:g}")
                out.append(Variant(name, str(path), scale, step, sha, group=entry.name or _default_label(entry),
                                   warnings=list(notes), allow_partial=entry.allow_partial,
                                   allow_inconsistent=entry.allow_inconsistent))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"variant names collide: {dup}; give the adapters distinct variants.adapters[].name")
    return out


def _default_label(entry: AdapterEntry) -> str:
    p = Path(entry.path)
    return p.stem if p.suffix == ".safetensors" else p.name


def _expand(entry: AdapterEntry, key: str) -> list[tuple[str, Path, Optional[int]]]:
    """(label, adapter path, step) for an entry: a file, one checkpoint, or a run's checkpoints."""
    p = Path(entry.path).resolve()
    label = entry.name or _default_label(entry)
    if not p.exists():
        raise ConfigError(f"{key}.path: {p} does not exist (a LoRA .safetensors, a checkpoint folder "
                          "or a training run folder)")
    if p.is_dir() and (p / "checkpoints").is_dir():
        done = RunLayout(p).complete_checkpoints()
        if not done:
            raise ConfigError(f"{key}.path: run folder {p} has no complete checkpoint (checkpoints/step-*/ with "
                              f"{MANIFEST}); train first or point at a checkpoint")
        if entry.checkpoints == "latest":
            done = done[-1:]
        return [(f"{label}.step-{step:07d}", ck, step) for step, ck in done]
    m = STEP_DIR.match(p.name)
    step = int(m.group(1)) if m and p.is_dir() else None
    if p.is_dir() and entry.name is None and step is not None:
        label = f"{p.parent.parent.name}.{p.name}"  # runs/<run>/checkpoints/step-N -> <run>.step-N
    return [(label, p, step)]


def _adapter_sha256(path: Path, key: str) -> str:
    from training.adapters import AdapterError
    from training.adapters.formats import read_adapter

    try:
        return read_adapter(path).sha256
    except AdapterError as e:
        raise ConfigError(f"{key}: {e}") from None


def _training_mismatch(path: Path, cfg: EvalConfig) -> list[str]:
    """Differences between how a checkpoint was trained and how the eval samples it."""
    src = path / CKPT_CONFIG if path.is_dir() else path.parent / CKPT_CONFIG
    if not src.is_file():
        return []
    trained = yaml.safe_load(src.read_text()) or {}
    data, model = trained.get("data", {}), trained.get("model", {})
    s = cfg.sampling
    notes = []
    for key, want in (("width", s.width), ("height", s.height), ("frames", s.frames)):
        if key in data and data[key] != want:
            notes.append(f"trained at data.{key}={data[key]}, sampled at sampling.{key}={want}")
    if data.get("fps") is not None and s.fps is not None and s.frames and s.frames > 1 and data["fps"] != s.fps:
        notes.append(f"trained on clips at data.fps={data['fps']:g}, written at sampling.fps={s.fps}: motion "
                     "speed differs")
    if s.max_text_length is not None and data.get("max_text_length") not in (None, s.max_text_length):
        notes.append(f"trained with data.max_text_length={data['max_text_length']}, sampled with "
                     f"{s.max_text_length}")
    # The manifest records the resolved base path; the config's may be relative to another cwd.
    manifest = src.parent / MANIFEST
    base = (json.loads(manifest.read_text()).get("base_model") or {}).get("path") if manifest.is_file() else None
    base = base or model.get("path")
    if base and Path(base).resolve() != Path(cfg.model.path).resolve():
        notes.append(f"trained on model {base}, evaluated on {cfg.model.path}")
    if model.get("revision") and cfg.model.revision and model["revision"] != cfg.model.revision:
        notes.append(f"trained on revision {model['revision']}, evaluated on {cfg.model.revision}")
    return [f"{path.name}: {n}" for n in notes]
