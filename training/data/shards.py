"""Shard lists: expand a ``data.shards`` spec and split shards between workers per epoch."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Union

import braceexpand

# Anything with a URL scheme (s3://, gs://, http://, file://, ...) or a pipe: command is
# opened by webdataset's gopen; it cannot be checked for existence here.
_REMOTE = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")
_MAX_LISTED = 5


def _is_remote(spec: str) -> bool:
    return bool(_REMOTE.match(spec))


def _expand_one(spec: str, missing: list[str]) -> list[str]:
    """Expand one spec element; missing local paths are appended to ``missing``."""
    out: list[str] = []
    # Braces are expanded for every kind of spec, remote ones included, exactly as webdataset
    # does ("s3://bucket/shard-{000..009}.tar" is the common way to name remote shards).
    for item in braceexpand.braceexpand(spec):
        if _is_remote(item):
            out.append(item)  # passed through unchanged
        elif os.path.isdir(item):
            tars = sorted(p.name for p in Path(item).glob("*.tar") if p.is_file())
            if not tars:
                raise FileNotFoundError(
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
    directory, and ``ValueError`` for an empty spec or duplicate shards.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items or any(not isinstance(s, str) or not s.strip() for s in items):
        raise ValueError(f"data.shards must be a non-empty path, pattern or list of them, got {spec!r}")
    missing: list[str] = []
    shards: list[str] = []
    for item in items:
        shards.extend(_expand_one(item.strip(), missing))
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise FileNotFoundError(
            f"{len(missing)} shard path(s) do not exist: {shown}{more} "
            f"(check data.shards; brace patterns like shard-{{000000..000009}}.tar must match the files)"
        )
    # Compare local paths by their real location so "./a.tar" and "a.tar" count as one shard:
    # a shard listed twice would be seen twice per epoch and silently double its weight.
    seen: dict[str, str] = {}
    dups: list[str] = []
    for s in shards:
        ident = s if _is_remote(s) else os.path.realpath(s)
        if ident in seen:
            dups.append(s if s == seen[ident] else f"{s} (= {seen[ident]})")
        else:
            seen[ident] = s
    if dups:
        raise ValueError(
            f"data.shards lists {len(dups)} shard(s) more than once: {', '.join(dups[:_MAX_LISTED])}"
            f"{' ...' if len(dups) > _MAX_LISTED else ''}; remove the duplicates"
        )
    return shards


def epoch_seed(seed: int, epoch: int) -> int:
    """Stable integer seed for (seed, epoch); never ``hash()``, which is salted per process."""
    return seed * 1_000_003 + epoch


def shard_assignment(shards: list[str], seed: int, epoch: int, rank: int, world_size: int) -> list[str]:
    """Shards that worker ``rank`` of ``world_size`` reads in ``epoch`` (pure function).

    The shard order is shuffled with ``random.Random(epoch_seed(seed, epoch))`` and rank r
    takes positions r, r + world_size, ... Ranks are disjoint and together cover every
    shard; counts may differ by one between ranks.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if len(shards) < world_size:
        raise ValueError(
            f"{len(shards)} shard(s) cannot be split over {world_size} data workers: each worker "
            f"needs at least one shard. Write the data as at least {world_size} shards "
            f"(e.g. `lorabench make-data --shards {world_size} ...`) or use fewer workers."
        )
    order = list(shards)
    random.Random(epoch_seed(seed, epoch)).shuffle(order)
    return order[rank::world_size]
