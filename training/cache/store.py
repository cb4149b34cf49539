"""The cache's on-disk format.

    DIR/index.json                 format version, settings (+ digest), one entry per source shard
    DIR/shards/<stem>-<hash>.tar   one per source shard, sample for sample in the same order

Every sample of a cache shard has two members named after the source sample's key:
``<key>.meta.json`` (the content key, the source, the skip or keep reason, the sha256 of the
tensors) and, for a usable sample, ``<key>.safetensors`` (the VAE posterior as ``posterior.*``
and the text conditions as ``cond.*``; safetensors bytes, never pickle, no metadata, so the
bytes depend only on the tensors). Tars are written with fixed headers (mtime 0, root owner),
so a cache shard's bytes depend only on its source shard and the settings: the same with 1 or
N workers, in any order.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..data.shards import is_remote
from ..errors import LorabenchError
from ..fsio import atomic_write_json, sha256_bytes, sha256_json
from .settings import CACHE_FORMAT_VERSION, CacheSettings

INDEX = "index.json"
SHARD_DIR = "shards"
META = "meta.json"
TENSORS = "safetensors"
REPAIR_HINT = "run `lorabench precompute CONFIG` with this run's config to update the cache"


class CacheError(LorabenchError, ValueError):
    """A latent cache that is missing, damaged, stale or made with other settings."""


class DamagedMember(CacheError):
    """A cache member whose meta is unreadable or whose tensors do not match their recorded sha256."""


def read_member(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], Optional[bytes]]:
    """A cache member's meta and tensor bytes, checked against the recorded sha256 (a skip record
    has no tensors); raises :class:`DamagedMember` naming ``where`` and what is wrong."""
    try:
        meta = json.loads(raw[META])
    except (KeyError, ValueError) as e:
        raise DamagedMember(f"cache member {where}: no readable {META} ({e})") from None
    data = raw.get(TENSORS)
    if not meta.get("skip") and (data is None or sha256_bytes(data) != meta.get("tensors_sha256")):
        raise DamagedMember(f"cache member {where}.{TENSORS} is missing or damaged (its sha256 does not match "
                            f"the one recorded at precompute)")
    return meta, data


def cache_shard_name(source: str) -> str:
    """File name of the cache shard of ``source``: its stem plus a hash of the full source name
    (two sources named ``000.tar`` in different folders get different cache shards)."""
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    stem = stem[:-4] if stem.endswith(".tar") else stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:60]
    return f"{safe}-{sha256_bytes(source.encode())[:12]}.tar"


def sample_key(raw: dict[str, Any], settings_digest: str) -> str:
    """Content key of a source sample under some settings: the sha256 of each of its members
    (media, caption, anything else) and the settings' digest."""
    members = {name: sha256_bytes(value) for name, value in raw.items()
               if not name.startswith("__") and isinstance(value, bytes)}
    return sha256_json({"members": members, "settings": settings_digest})


def pack_tensors(posterior: dict[str, torch.Tensor], cond: dict[str, torch.Tensor]) -> bytes:
    tensors = {f"posterior.{k}": v for k, v in posterior.items()}
    tensors.update({f"cond.{k}": v for k, v in cond.items()})
    return save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def unpack_tensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    tensors = load_tensors(data)
    posterior = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("posterior.")}
    cond = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("cond.")}
    return posterior, cond


def source_identity(shard: str) -> Optional[dict[str, int]]:
    """Size and modification time of a local source shard (None for pipe:/URL shards)."""
    if is_remote(shard):
        return None
    st = os.stat(shard)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ShardWriter:
    """Deterministic tar writer: fixed header fields, members in the order they are added."""

    def __init__(self, f: BinaryIO) -> None:
        self.tar = tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, meta: dict[str, Any], tensors: Optional[bytes]) -> None:
        self._add(f"{key}.{META}", json.dumps(meta, sort_keys=True).encode())
        if tensors is not None:
            self._add(f"{key}.{TENSORS}", tensors)

    def close(self) -> None:
        self.tar.close()


@dataclass
class CacheIndex:
    """``index.json``: the settings a cache was made with and what each source shard became."""

    root: Path
    settings: dict[str, Any]
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / INDEX

    @classmethod
    def load(cls, root: Path) -> Optional["CacheIndex"]:
        path = root / INDEX
        if not path.is_file():
            return None
        try:
            body = json.loads(path.read_bytes())
        except (UnicodeDecodeError, ValueError) as e:
            raise CacheError(f"{path} is not valid JSON ({e}): the cache index is damaged; delete it and "
                             f"{REPAIR_HINT} (finished shards are reused by content)") from None
        if not isinstance(body, dict) or body.get("format_version") != CACHE_FORMAT_VERSION:
            raise CacheError(f"{path}: cache format version {body.get('format_version') if isinstance(body, dict) else '?'}"
                             f", this lorabench reads {CACHE_FORMAT_VERSION}; {REPAIR_HINT} into a new folder")
        return cls(root, body.get("settings", {}), body.get("shards", {}))

    def save(self) -> None:
        atomic_write_json(self.path, {"format_version": CACHE_FORMAT_VERSION, "settings": self.settings,
                                      "settings_digest": sha256_json(self.settings),
                                      "shards": dict(sorted(self.shards.items()))}, sort_keys=True)

    def check_settings(self, settings: CacheSettings) -> None:
        """Refuse a cache made with other settings, naming every field that differs."""
        diff = settings.differences(self.settings)
        if diff:
            raise CacheError(f"the latent cache {self.root} was made with other settings, its latents would "
                             f"be wrong for this run:\n  " + "\n  ".join(diff)
                             + f"\n{REPAIR_HINT} (only what changed is recomputed), or point data.cache at "
                               "another folder")

    def shard_path(self, source: str) -> Path:
        return self.root / self.shards[source]["cache"]

    def check_shard(self, source: str, count: Optional[int] = None) -> Path:
        """The cache shard of ``source``, after checking it is there and the source unchanged."""
        entry = self.shards.get(source)
        if entry is None:
            raise CacheError(f"the latent cache {self.root} has no entry for source shard {source}; {REPAIR_HINT}")
        path = self.root / entry["cache"]
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            raise CacheError(f"cache shard {path} (of {source}) is missing or has another size than indexed; "
                             f"{REPAIR_HINT}")
        have = source_identity(source)
        if have is not None and entry.get("source") not in (None, have):
            raise CacheError(f"source shard {source} changed since it was precomputed (size/mtime "
                             f"{entry['source']} then, {have} now); {REPAIR_HINT}")
        if count is not None and entry.get("samples") != count:
            raise CacheError(f"source shard {source} holds {count} samples, its cache {entry.get('samples')}; "
                             f"{REPAIR_HINT}")
        return path
