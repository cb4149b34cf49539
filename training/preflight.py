"""Every check of a training run that needs no weights, run before anything heavy.

Run by each rank before loading anything, and by launchers (the Ray driver) before starting
workers, so bad config or data fails in seconds, not after minutes of model loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .cache.source import CachedSource
from .checkpoint import CheckpointError, read_checkpoint_config, resolve_resume
from .config import ConfigError, RunConfig, resume_invariants, setting
from .data.index import ShardScan, scan_shards
from .data.shards import list_shards, shard_assignment
from .layout import SHARD_INDEX, RunLayout
from .models import get_spec
from .outputs import check_writable_dir


def preflight(cfg: RunConfig, rank: int, world_size: int) -> tuple[ShardScan, Optional[Path]]:
    """Geometry, shards for this world, output folders, resume target and its settings, the
    shard scan (bad shards counted, within data.max_bad_fraction) and the latent cache.

    Returns the shard scan and the checkpoint to resume from (None: a fresh run).
    """
    layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
    check_writable_dir(cfg.output_dir, "output_dir")  # before minutes of model loading, not after
    check_writable_dir(layout.root, "run_name")
    geo = get_spec(cfg.model.family).geometry(cfg.model.path)
    problems = geo.check(cfg.data.width, cfg.data.height, cfg.data.frames)
    if problems:
        raise ConfigError("invalid config for model.family=%s:\n  %s" % (cfg.model.family,
                                                                           "\n  ".join(problems)))
    shards = list_shards(cfg.data.shards)
    try:  # fewer shards than ranks: say so before any model loads
        shard_assignment(shards, cfg.seed, 0, rank, world_size)
    except ValueError as e:
        raise ConfigError(f"data.shards: {e}") from None
    resume_from = resolve_resume(layout, cfg.train.resume)
    if resume_from is None and (layout.complete_checkpoints() or layout.damaged_checkpoints()):
        raise ConfigError(
            f"{layout.root} already holds checkpoints; resume with train.resume=auto, or "
            f"choose another run_name (nothing is overwritten)")
    if resume_from is not None:
        check_resume_config(cfg, resume_from)
    # Per-shard sample counts (balanced epochs) and bad shards, cached in the run folder: the
    # driver's scan makes the ranks' scans cache hits.
    layout.root.mkdir(parents=True, exist_ok=True)
    scan = scan_shards(shards, cache=layout.root / SHARD_INDEX)
    scan.check(cfg.data.max_bad_fraction, world_size)
    if cfg.data.cache:  # a stale or foreign latent cache fails here, naming the field that differs
        CachedSource.for_run(cfg, scan.counts)
    return scan, resume_from


def check_resume_config(cfg: RunConfig, ckpt: Path) -> None:
    """Refuse to resume when a resume invariant (see config.RESUME_INVARIANT) changed."""
    old = read_checkpoint_config(ckpt)  # checked against the manifest's sha256: one-line errors
    new = cfg.to_dict()
    changed = [k for k in resume_invariants() if setting(old, k) != setting(new, k)]
    if changed:
        details = "; ".join(f"{k}: {setting(old, k)!r} -> {setting(new, k)!r}" for k in changed)
        raise CheckpointError(f"cannot resume from {ckpt}: settings changed since it was saved "
                              f"({details}); resume with the checkpoint's config.yaml")
