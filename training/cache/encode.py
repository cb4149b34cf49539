"""Encoding source shards into cache shards: the only place a cache is written."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import RunConfig
from ..data.captions import CaptionLengthCheck
from ..data.decode import BadSample
from ..data.pipeline import MediaDecoder
from ..data.reader import raw_samples
from ..fsio import atomic_file, sha256_bytes
from ..models import get_spec
from ..precision import ComponentDtypes, component_role
from ..runtime import resolve_device
from .settings import CacheSettings
from .store import (SHARD_DIR, DamagedMember, ShardWriter, cache_shard_name, pack_tensors, read_member, sample_key,
                    source_identity)

log = logging.getLogger("lorabench.cache")


def _old_members(path: Optional[Path]) -> dict[str, tuple[dict[str, Any], Optional[bytes]]]:
    """Reusable samples of an earlier cache shard, by content key; damaged ones are left out
    (they are recomputed). An unreadable shard reuses nothing."""
    if path is None or not path.is_file():
        return {}
    out: dict[str, tuple[dict[str, Any], Optional[bytes]]] = {}
    try:
        for raw in raw_samples(str(path)):
            try:
                meta, data = read_member(raw, f"{path}:{raw['__key__']}")
            except DamagedMember:
                continue
            out[meta["key"]] = (meta, data)
    except Exception as e:  # a torn or foreign file: start this shard over
        log.warning("not reusing %s: %s", path, e)
    return out


class CacheEncoder:
    """Loads the VAE and text encoders (never the transformer) and writes cache shards."""

    def __init__(self, cfg: RunConfig, settings: CacheSettings, device: str = "auto") -> None:
        self.cfg, self.settings, self.digest = cfg, settings, settings.digest
        self.spec = get_spec(cfg.model.family)
        self.device = resolve_device(device)
        path = Path(cfg.model.path)
        denoisers = [c for c in self.spec.components(path) if component_role(c) == "denoiser"]
        self.pipe = self.spec.load_pipeline(path, dtype=ComponentDtypes.from_model_config(cfg.model),
                                            without=denoisers)
        self.pipe.set_progress_bar_config(disable=True)
        for module in self.pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval().to(self.device)
        d = cfg.data
        self.max_text = settings.max_text_length
        captions = CaptionLengthCheck.for_pipeline(self.pipe, self.spec.text_limits(self.max_text), d.long_captions)
        # The very checks and decoding training does: a cached sample is what it would have seen.
        self.decode = MediaDecoder(self.spec.modality, d.frames, d.height, d.width, d.fps, captions)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, caption: str) -> bytes:
        """One sample (batch of one: the bytes do not depend on how samples are grouped)."""
        posterior = self.spec.encode_posterior(self.pipe, pixels[None].to(self.device))
        cond = self.spec.encode_text(self.pipe, [caption], self.device, self.max_text).kwargs
        return pack_tensors({k: v[0] for k, v in posterior.items()}, {k: v[0] for k, v in cond.items()})

    def encode_shard(self, source: str, root: Path, previous: Optional[str] = None) -> dict[str, Any]:
        """Write the cache shard of ``source`` under ``root`` (atomically) and return its index entry.

        Samples whose content key is in ``previous`` (the shard's earlier cache file, relative to
        ``root``) are copied from it instead of encoded: only what changed is recomputed.
        """
        start = time.perf_counter()
        name = f"{SHARD_DIR}/{cache_shard_name(source)}"
        old = _old_members(root / previous if previous else None)
        identity = source_identity(source)
        stats = {"samples": 0, "good": 0, "encoded": 0, "reused": 0, "skips": {}}
        with atomic_file(root / name) as f:
            writer = ShardWriter(f)
            for raw in raw_samples(source):
                key, where = raw["__key__"], f"{source}:{raw['__key__']}"
                # The file name only, not the path: the bytes do not depend on where the data is mounted.
                named = f"{source.rstrip('/').rsplit('/', 1)[-1]}:{key}"
                skey = sample_key(raw, self.digest)
                stats["samples"] += 1
                if skey in old:
                    meta, data = old[skey]
                    meta = dict(meta, source=named, index=raw["__index__"])
                    stats["reused"] += 1
                else:
                    meta = {"key": skey, "settings": self.digest, "source": named, "index": raw["__index__"]}
                    data = None
                    try:
                        sample, kept = self.decode(raw, where)
                    except BadSample as e:
                        meta.update(skip=e.reason, detail=e.detail)
                    else:
                        data = self.encode(sample["pixels"], sample["caption"])
                        meta.update(caption=sample["caption"], kept=kept, tensors_sha256=sha256_bytes(data))
                    stats["encoded"] += 1
                if meta.get("skip"):
                    stats["skips"][meta["skip"]] = stats["skips"].get(meta["skip"], 0) + 1
                else:
                    stats["good"] += 1
                writer.add(key, meta, data)
            writer.close()
        size = (root / name).stat().st_size
        return {"cache": name, "bytes": size, "source": identity, "seconds": round(time.perf_counter() - start, 3),
                **stats}
