"""Shard lists: expand a ``data.shards`` spec, split shards between workers per epoch, and plan
epochs in which every worker yields the same number of samples (:func:`epoch_plan`)."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import braceexpand

from ..errors import MissingFileError
from .errors import DataSpecError, listed

# Anything with a URL scheme (s3://, gs://, http://, file://, ...) or a pipe: command is
# opened by webdataset's gopen; it cannot be checked for existence here.
_REMOTE = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")


def is_remote(spec: str) -> bool:
    return bool(_REMOTE.match(spec))


def _expand_one(spec: str, missing: list[str]) -> list[str]:
    """Expand one spec element; missing local paths are appended to ``missing``."""
    out: list[str] = []
    # Braces are expanded for every kind of spec, remote ones included, exactly as webdataset
    # does ("s3://bucket/shard-{000..009}.tar" is the common way to name remote shards).
    for item in braceexpand.braceexpand(spec):
        if is_remote(item):
            out.append(item)  # passed through unchanged
        elif os.path.isdir(item):
            tars = sorted(p.name for p in Path(item).glob("*.tar") if p.is_file())
            if not tars:
                raise MissingFileError(
                    f"shard directory {item} contains no .tar files; write shards into it "
                    f"(e.g. `lorabench make-data --out {item} ...`) or point data.shards elsewhere"
                )
            out.extend(os.path.join(item, name) for name in tars)
        elif os.path.exists(item):
            out.append(item)
        else:
            missing.append(item)
    return out


def list_shards(spec: Union[str, list[str]]) -> list[str]:
    """Expand a shard spec into a list of shard paths/URLs.

    ``spec`` is a directory (its ``*.tar`` files, sorted by name), a file path or brace
    pattern such as ``data/shard-{000000..000003}.tar``, a ``pipe:`` command or URL with a
    scheme (passed through without an existence check), or a list of any of these.

    Raises ``FileNotFoundError`` naming missing local paths (at most 5) or an empty
    directory, and :class:`~training.data.errors.DataSpecError` (a ``ValueError``) for an empty
    spec or duplicate shards.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items or any(not isinstance(s, str) or not s.strip() for s in items):
        raise DataSpecError(f"data.shards must be a non-empty path, pattern or list of them, got {spec!r}")
    missing: list[str] = []
    shards: list[str] = []
    for item in items:
        shards.extend(_expand_one(item.strip(), missing))
    if missing:
        raise MissingFileError(
            f"{len(missing)} shard path(s) do not exist: {listed(missing, count_rest=True)} "
            f"(check data.shards; brace patterns like shard-{{000000..000009}}.tar must match the files)"
        )
    # Compare local paths by their real location so "./a.tar" and "a.tar" count as one shard:
    # a shard listed twice would be seen twice per epoch and silently double its weight.
    seen: dict[str, str] = {}
    dups: list[str] = []
    for s in shards:
        ident = s if is_remote(s) else os.path.realpath(s)
        if ident in seen:
            dups.append(s if s == seen[ident] else f"{s} (= {seen[ident]})")
        else:
            seen[ident] = s
    if dups:
        raise DataSpecError(
            f"data.shards lists {len(dups)} shard(s) more than once: {listed(dups)}; remove the duplicates"
        )
    return shards


def epoch_seed(seed: int, epoch: int) -> int:
    """Stable integer seed for (seed, epoch); never ``hash()``, which is salted per process."""
    return seed * 1_000_003 + epoch


def _check_split(num_shards: int, rank: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``num_shards`` shards can be split over ``world_size`` workers."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_shards < world_size:
        raise DataSpecError(
            f"{num_shards} shard(s) cannot be split over {world_size} data workers: each worker "
            f"needs at least one shard. Write the data as at least {world_size} shards "
            f"(e.g. `lorabench make-data --shards {world_size} ...`) or use fewer workers."
        )


def _epoch_order(shards: list[str], seed: int, epoch: int) -> list[str]:
    """All shards in the order of ``epoch``; rank r of W takes positions r, r + W, ..."""
    order = list(shards)
    random.Random(epoch_seed(seed, epoch)).shuffle(order)
    return order


def shard_assignment(shards: list[str], seed: int, epoch: int, rank: int, world_size: int) -> list[str]:
    """Shards that worker ``rank`` of ``world_size`` reads in ``epoch`` (pure function).

    The shard order is shuffled with ``random.Random(epoch_seed(seed, epoch))`` and rank r
    takes positions r, r + world_size, ... Ranks are disjoint and together cover every
    shard; counts may differ by one between ranks.
    """
    _check_split(len(shards), rank, world_size)
    return _epoch_order(shards, seed, epoch)[rank::world_size]


# ----------------------------------------------------------------------------- epoch plans


@dataclass(frozen=True)
class EpochPlan:
    """How many samples each worker yields in one epoch, so that all workers stay in step.

    Shards differ in size, so the workers' shares of an epoch (``shards[r]``, holding
    ``raw_samples[r]`` samples) differ too. Every worker yields ``samples_per_rank`` samples:
    the smallest share rounded down to whole batches. Larger shares drop their remainder
    for this epoch (``dropped``, the end of the worker's reading order); the next epoch
    reshuffles which shards go together and in which order, so the dropped part moves. Only
    the tail of a shard much larger than the smallest share can be dropped in every epoch
    (e.g. one shard per worker): keep shard sizes similar, with several shards per worker.
    Without a plan, a worker that runs out first starts its next epoch (or, in frameworks
    with collective ops, waits forever) while the others are still training.
    """

    epoch: int
    batch_size: int
    shards: tuple[tuple[str, ...], ...]  # per rank, in reading order
    raw_samples: tuple[int, ...]  # per rank: samples in its shards, good or bad
    samples_per_rank: int

    @property
    def world_size(self) -> int:
        return len(self.shards)

    @property
    def dropped(self) -> tuple[int, ...]:
        """Raw samples each rank leaves unread this epoch (before any bad ones are skipped)."""
        return tuple(n - self.samples_per_rank for n in self.raw_samples)

    def summary(self) -> str:
        """One line for logs, e.g. ``epoch 2: 12 samples per rank (batch 4); raw [17, 12], ...``."""
        return (
            f"epoch {self.epoch}: {self.samples_per_rank} samples per rank (batch {self.batch_size}); "
            f"raw samples per rank {list(self.raw_samples)}, dropped {list(self.dropped)}"
        )


def _shard_counts(shards: tuple[str, ...], counts: Mapping[str, int]) -> int:
    """Total samples of ``shards``; a shard missing from ``counts`` is an error, not zero."""
    missing = [s for s in shards if s not in counts]
    if missing:
        raise DataSpecError(
            f"no sample count for shard(s) {listed(missing)}: the counts must cover every shard "
            f"(count them with training.data.index.shard_sample_counts on the same shard list)"
        )
    return sum(counts[s] for s in shards)


def epoch_plan(
    shards: list[str], counts: Mapping[str, int], seed: int, epoch: int, world_size: int, batch_size: int
) -> EpochPlan:
    """The :class:`EpochPlan` of ``epoch`` (pure function: every rank computes the same plan).

    ``counts`` maps each shard to its number of samples (see ``index.shard_sample_counts``).
    Raises :class:`~training.data.errors.DataSpecError` (a ``ValueError``) when the smallest
    share holds less than one batch: the epoch could not train at all, and the message names
    the rank, its shards and the possible fixes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_split(len(shards), 0, world_size)
    order = _epoch_order(shards, seed, epoch)
    per_rank = tuple(tuple(order[r::world_size]) for r in range(world_size))
    raw = tuple(_shard_counts(part, counts) for part in per_rank)
    smallest = min(range(world_size), key=lambda r: raw[r])  # lowest rank among ties
    per_rank_samples = raw[smallest] // batch_size * batch_size
    if per_rank_samples == 0:
        raise _empty_epoch(epoch, smallest, per_rank[smallest], raw[smallest], batch_size, world_size)
    return EpochPlan(epoch, batch_size, per_rank, raw, per_rank_samples)


def _empty_epoch(epoch: int, rank: int, shards: tuple[str, ...], samples: int, batch_size: int,
                 world_size: int) -> DataSpecError:
    return DataSpecError(
        f"epoch {epoch} cannot give every data worker a full batch: rank {rank} of {world_size} "
        f"gets shard(s) {listed(shards)} with only {samples} sample(s), fewer than batch_size={batch_size}, "
        f"and all ranks must yield the same number of whole batches. Write more or larger "
        f"shards, use fewer data workers, or a smaller batch size."
    )
