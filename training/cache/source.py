"""What training reads from a latent cache instead of media: the VAE posterior and the text
conditions of each sample, checked against this run's settings and their recorded sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ..config import RunConfig
from ..data.decode import BadSample
from ..data.reader import raw_samples
from .settings import CacheSettings, default_memo
from .store import REPAIR_HINT, CacheError, CacheIndex, DamagedMember, read_member, unpack_tensors


class CachedSource:
    """The ``open_shard`` and ``decoder`` of a :class:`~training.data.pipeline.ShardStream` that
    reads ``data.cache``: source shard names (so split, order and counts are unchanged) mapped
    to their cache shards, and cached samples decoded into ``posterior`` and ``cond`` tensors."""

    def __init__(self, root: Path, settings: CacheSettings, counts: Mapping[str, int]) -> None:
        index = CacheIndex.load(root)
        if index is None:
            raise CacheError(f"data.cache={root} holds no latent cache (no index.json); make it with "
                             f"`lorabench precompute CONFIG data.cache={root}` first")
        index.check_settings(settings)
        self.root, self.digest = root, settings.digest
        self.paths = {source: str(index.check_shard(source, count)) for source, count in counts.items()}

    @classmethod
    def for_run(cls, cfg: RunConfig, counts: Mapping[str, int]) -> "CachedSource":
        assert cfg.data.cache is not None
        return cls(Path(cfg.data.cache), CacheSettings.for_run(cfg, memo=default_memo()), counts)

    def open_shard(self, source: str) -> Iterator[dict[str, Any]]:
        return raw_samples(self.paths[source])

    def __call__(self, sample: dict[str, Any], where: str) -> tuple[dict[str, Any], Optional[str]]:
        key = sample["__key__"]
        try:
            meta, data = read_member(sample, where)
        except DamagedMember as e:
            raise CacheError(f"{e}; run `lorabench precompute CONFIG --verify` with this run's config: it finds "
                             f"damaged members and recomputes only those") from None
        if meta.get("settings") != self.digest:
            raise CacheError(f"cache member {where} was computed with other settings than its index says "
                             f"(a shard copied from another cache?); {REPAIR_HINT}")
        if meta.get("skip"):  # a sample precompute skipped, for the reason training would have
            raise BadSample(meta["skip"], f"{meta.get('detail', '')} (source {meta.get('source')})")
        posterior, cond = unpack_tensors(data)
        return {"key": key, "posterior": posterior, "cond": cond, "caption": meta.get("caption", "")}, meta.get("kept")
