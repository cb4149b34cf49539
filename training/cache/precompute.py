"""The precompute stage without Ray: plan what is missing or stale, encode it, keep the index.

``cluster.precompute`` runs the same plan on a Ray actor pool; both record each finished shard
in the index as soon as it is written, so an interrupted precompute resumes with what is left.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import ConfigError, RunConfig
from ..data.index import scan_shards
from ..data.shards import list_shards
from ..models import get_spec
from ..fsio import human_bytes
from ..outputs import check_writable_dir
from ..precision import DTYPES, ComponentDtypes
from .settings import CacheSettings, default_memo
from .store import CacheError, CacheIndex, source_identity

log = logging.getLogger("lorabench.cache")


@dataclass
class PrecomputePlan:
    cfg: RunConfig
    root: Path
    settings: CacheSettings
    index: CacheIndex
    counts: dict[str, int]       # usable source shard -> samples
    todo: list[str]              # source shards to (re)compute, in list order
    bytes_per_sample: int
    bad_shards: list[str] = field(default_factory=list)
    #: what this run has written so far (``record`` adds each finished shard)
    totals: dict[str, int] = field(default_factory=lambda: {"shards": 0, "samples": 0, "encoded": 0, "reused": 0})

    @property
    def samples(self) -> int:
        return sum(self.counts.values())

    @property
    def todo_samples(self) -> int:
        return sum(self.counts[s] for s in self.todo)

    def describe(self) -> str:
        done = len(self.counts) - len(self.todo)
        total = self.bytes_per_sample * self.samples
        return (f"precompute: {len(self.counts)} source shard(s), {self.samples} samples -> {self.root}\n"
                f"  writes {human_bytes(self.bytes_per_sample)} of tensors per sample (latents + text embeddings), "
                f"{human_bytes(total)} in all (plus ~2 KiB per sample of tar headers and metadata); {done} shard(s) already cached and current, {len(self.todo)} to do "
                f"({self.todo_samples} samples)"
                + (f"; {len(self.bad_shards)} bad source shard(s) left out" if self.bad_shards else ""))

    def record(self, source: str, entry: dict[str, Any]) -> None:
        """A finished shard: into the index at once (atomically), so a crash keeps it; counted."""
        self.index.shards[source] = entry
        self.index.save()
        for k in ("samples", "encoded", "reused"):
            self.totals[k] += entry[k]
        self.totals["shards"] += 1


def bytes_per_sample(cfg: RunConfig, settings: CacheSettings) -> int:
    """What one cached sample holds, from the model's configs (see ModelSpec.cache_shapes)."""
    spec = get_spec(cfg.model.family)
    dtypes = ComponentDtypes.from_model_config(cfg.model)
    shapes = spec.cache_shapes(cfg.model.path, cfg.data.width, cfg.data.height, cfg.data.frames,
                               settings.max_text_length)
    return sum(math.prod(shape) * DTYPES[getattr(dtypes, role)].itemsize for role, shape in shapes.values())


def plan_precompute(cfg: RunConfig, verify: bool = False) -> PrecomputePlan:
    """Settings, index and the shards whose cache is missing, stale or damaged.

    The checks are cheap (the index entry, the cache file's size, the source's size and mtime);
    ``verify`` also re-hashes every cached member, so bit rot inside a shard is found and only
    the damaged members are recomputed.
    """
    if not cfg.data.cache:
        raise ConfigError("data.cache is not set: name the folder the cache goes to, e.g. data.cache=cache/wan-480p")
    root = Path(cfg.data.cache)
    check_writable_dir(root, "data.cache")
    spec = get_spec(cfg.model.family)
    problems = spec.geometry(cfg.model.path).check(cfg.data.width, cfg.data.height, cfg.data.frames)
    if problems:
        raise ConfigError("invalid config for model.family=%s:\n  %s" % (cfg.model.family, "\n  ".join(problems)))
    settings = CacheSettings.for_run(cfg, memo=default_memo())
    root.mkdir(parents=True, exist_ok=True)
    index = CacheIndex.load(root)
    if index is None or settings.differences(index.settings):
        if index is not None:
            log.warning("cache %s was made with other settings (%s): recomputing it",
                        root, "; ".join(settings.differences(index.settings)))
        # The old cache files stay until rewritten: samples are reused only by content key,
        # and keys include the settings, so nothing of another setting is ever reused.
        index = CacheIndex(root, settings.to_dict(), {s: dict(e, stale=True) for s, e in
                                                      (index.shards.items() if index else [])})
    scan = scan_shards(list_shards(cfg.data.shards), cache=root / "source_index.json")
    scan.check(cfg.data.max_bad_fraction)
    todo = [s for s in scan.usable if not _current(index, s, scan.counts[s])
            or (verify and damaged_members(index.shard_path(s)))]
    return PrecomputePlan(cfg, root, settings, index, dict(scan.counts), todo,
                          bytes_per_sample(cfg, settings), [b.shard for b in scan.bad])


def _current(index: CacheIndex, source: str, count: int) -> bool:
    entry = index.shards.get(source)
    if entry is None or entry.get("stale"):
        return False
    try:
        index.check_shard(source, count)
    except CacheError:
        return False
    return source_identity(source) == entry.get("source") or entry.get("source") is None


def damaged_members(path: Path) -> list[str]:
    """Keys of the members of a cache shard that are unreadable or whose tensors do not match
    their recorded sha256."""
    from ..data.reader import raw_samples
    from .store import DamagedMember, read_member

    bad = []
    try:
        for raw in raw_samples(str(path)):
            try:
                read_member(raw, f"{path}:{raw['__key__']}")
            except DamagedMember:
                bad.append(raw["__key__"])
    except Exception:
        return ["<unreadable shard>"]
    return bad


def previous_file(plan: PrecomputePlan, source: str) -> Optional[str]:
    """The shard's earlier cache file (relative to the cache root), to reuse samples from: its own
    entry, else that of a source with the same file name (the data moved or is mounted
    elsewhere: content keys decide what is reused, so nothing is re-encoded for a move)."""
    entry = plan.index.shards.get(source)
    if entry is None:
        name = source.rstrip("/").rsplit("/", 1)[-1]
        entry = next((e for s, e in plan.index.shards.items() if s.rstrip("/").rsplit("/", 1)[-1] == name), None)
    return entry.get("cache") if entry else None


def run_local(plan: PrecomputePlan, device: str = "auto",
              on_shard: Optional[Callable[[str, dict[str, Any]], None]] = None, progress: bool = True) -> dict[str, Any]:
    """Encode every shard of ``plan.todo`` in this process; returns the totals."""
    from ..console import progress as progress_bar
    from .encode import CacheEncoder

    if not plan.todo:
        return plan.totals
    encoder = CacheEncoder(plan.cfg, plan.settings, device=device)
    bar = progress_bar(total=plan.todo_samples, desc="precompute", unit="sample", disable=not progress)
    try:
        for source in plan.todo:
            entry = encoder.encode_shard(source, plan.root, previous_file(plan, source))
            plan.record(source, entry)
            bar.update(entry["samples"])
            if on_shard is not None:
                on_shard(source, entry)
    finally:
        bar.close()
    return plan.totals
