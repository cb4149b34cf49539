"""What a latent cache depends on: every setting that changes a cached tensor's bytes."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from ..config import RunConfig
from ..data.decode import CROP_POLICY
from ..fsio import atomic_write_json, human_bytes, sha256_file, sha256_json
from ..models import get_spec

log = logging.getLogger("lorabench.cache")
from ..precision import ComponentDtypes, component_role

#: Bump when the cache's layout or the meaning of a stored tensor changes.
CACHE_FORMAT_VERSION = 1

# The config field (or thing) behind each setting, for "refused: <field> differs" messages.
FIELD_SOURCES = {
    "format_version": "the lorabench cache format version",
    "family": "model.family",
    "vae": "the VAE weights (model.path/vae)",
    "text_encoders": "the text encoder weights (model.path/text_encoder*)",
    "vae_dtype": "model.vae_dtype",
    "text_encoder_dtype": "model.text_encoder_dtype",
    "width": "data.width",
    "height": "data.height",
    "frames": "data.frames",
    "fps": "data.fps",
    "crop": "the resize/crop rule (training.data.decode.CROP_POLICY)",
    "max_text_length": "data.max_text_length",
    "long_captions": "data.long_captions",
}


@dataclass(frozen=True)
class CacheSettings:
    format_version: int
    family: str
    vae: str                       # sha256 over the VAE folder's files
    text_encoders: dict[str, str]  # component -> sha256 over its folder's files
    vae_dtype: str
    text_encoder_dtype: str
    width: int
    height: int
    frames: int
    fps: Optional[float]
    crop: str
    max_text_length: int
    long_captions: str

    @classmethod
    def for_run(cls, cfg: RunConfig, memo: Optional[Path] = None) -> "CacheSettings":
        """The settings a run encodes with (hashing the encoder weights; see :func:`folder_digest`)."""
        spec = get_spec(cfg.model.family)
        path = Path(cfg.model.path)
        dtypes = ComponentDtypes.from_model_config(cfg.model)
        texts = [c for c in spec.components(path) if component_role(c) == "text"]
        return cls(format_version=CACHE_FORMAT_VERSION, family=cfg.model.family,
                   vae=folder_digest(path / "vae", memo),
                   text_encoders={c: folder_digest(path / c, memo) for c in texts},
                   vae_dtype=dtypes.vae, text_encoder_dtype=dtypes.text,
                   width=cfg.data.width, height=cfg.data.height, frames=cfg.data.frames, fps=cfg.data.fps,
                   crop=CROP_POLICY,
                   max_text_length=cfg.data.max_text_length or spec.default_max_text_length,
                   long_captions=cfg.data.long_captions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        return sha256_json(self.to_dict())

    def differences(self, other: dict[str, Any]) -> list[str]:
        """``"data.width: 64 (cache) vs 32 (this run)"`` for every setting that differs from ``other``
        (a cache index's settings)."""
        mine = self.to_dict()
        out = []
        for f in fields(self):
            have = other.get(f.name, "<missing>")
            if have != mine[f.name]:
                out.append(f"{FIELD_SOURCES[f.name]}: {_short(have)} (cache) vs {_short(mine[f.name])} (this run)")
        return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def folder_digest(folder: Path, memo: Optional[Path] = None) -> str:
    """sha256 over a model component folder: every file's relative name and sha256.

    Weights are GBs (umT5-XXL: 11 GB), so each file's hash is remembered in ``memo`` (a JSON
    file) under its absolute path, size and modification time: a file is read again only
    when one of those changes.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: the model folder is incomplete")
    known = _read_memo(memo)
    files: dict[str, str] = {}
    tags = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        tags[f] = (f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}", st.st_size)
    todo = sum(size for tag, size in tags.values() if tag not in known)
    if todo > 1 << 30:  # minutes of reading: say why the start is slow, and that it happens once
        log.info("hashing %s of weights in %s (once: remembered in %s)", human_bytes(todo), folder, memo)
    for f, (tag, _) in tags.items():
        if tag not in known:
            known[tag] = sha256_file(f)
        files[str(f.relative_to(folder))] = known[tag]
    if memo is not None:
        atomic_write_json(memo, known, indent=None, sort_keys=True, fsync=False)
    return sha256_json(files)


def _read_memo(memo: Optional[Path]) -> dict[str, str]:
    if memo is None or not memo.is_file():
        return {}
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):
        return {}  # a damaged memo only costs re-hashing
    return data if isinstance(data, dict) else {}


def default_memo() -> Path:
    """Where weight hashes are remembered between runs ($XDG_CACHE_HOME/lorabench)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lorabench" / "weight-sha256.json"
