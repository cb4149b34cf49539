"""Sample counts per shard, so that every worker can be given the same number of samples.

Counts follow webdataset's own grouping: consecutive tar members sharing a key (the member
path up to the first dot of its file name) form one sample, exactly as the input stream
groups them. Local tars are counted from their member headers only (``tarfile`` seeks over
the member data), which takes milliseconds even for large shards; ``pipe:`` and URL shards
have to be streamed through once.

:func:`shard_sample_counts` can keep the counts in a JSON cache file::

    {"version": 1, "shards": {
        "/data/shard-000000.tar": {"realpath": "...", "size": 123, "mtime_ns": 456, "samples": 64},
        "pipe:aws s3 cp s3://b/shard-000001.tar -": {"samples": 64}}}

A local entry is reused while the file's real path, size and mtime are unchanged. A remote
shard cannot be checked cheaply, so it is assumed immutable: its entry is keyed by the URL
string and reused as long as that string is the same (give changed remote data a new name,
or delete the cache file).

A crawl of thousands of shards always holds a few broken ones. :func:`scan_shards` (what the
trainer uses) counts the good shards and sets the bad ones aside with a reason each
(``shard_missing``, ``shard_permission_denied``, ``shard_empty``, ``shard_truncated``,
``shard_unreadable``); :meth:`ShardScan.check` then fails in one line only when no shard is
usable or more than ``data.max_bad_fraction`` of them are bad. :func:`shard_sample_counts`
stays strict and raises at the first bad shard.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from webdataset import tariterators

from ..console import progress
from ..fsio import atomic_write_json
from .errors import DataError, DataSpecError, ShardError, counts_text, listed, shard_error_reason
from .reader import COMPRESSED_MAGIC, raw_samples
from .shards import is_remote

log = logging.getLogger("lorabench.data")

CACHE_VERSION = 1
_PROGRESS_MIN_SHARDS = 50  # a bar for a handful of millisecond-long counts is just noise

# Member names webdataset drops before grouping; taken from the installed version itself so
# that counts keep matching what the stream yields.
_SKIP_META = inspect.signature(tariterators.tar_file_iterator).parameters["skip_meta"].default


# ----------------------------------------------------------------------------- counting


def _is_meta(name: str) -> bool:
    """Whether webdataset's ``tar_file_iterator`` skips this member name."""
    prefix, suffix = tariterators.meta_prefix, tariterators.meta_suffix
    if "/" not in name and name.startswith(prefix) and name.endswith(suffix):
        return True
    return _SKIP_META is not None and re.match(_SKIP_META, name) is not None


def _count_grouped(shard: str, names: Iterable[str]) -> int:
    """Samples formed from member ``names`` (regular files, in tar order), as ``group_by_keys`` forms them."""
    samples, key, suffixes = 0, None, set()
    for name in names:
        if _is_meta(name):
            continue
        prefix, suffix = tariterators.base_plus_ext(name)
        if prefix is None:
            continue  # no extension: webdataset ignores the member
        suffix = suffix.lower()
        if prefix != key:
            samples, key, suffixes = samples + 1, prefix, set()
        if suffix in suffixes:
            # webdataset stops the shard here with "duplicate file name"; so does the stream.
            raise ShardError(
                f"shard {shard} holds member {name} twice in sample {prefix!r} (names differ only "
                f"in case, or are repeated); webdataset cannot read it. Re-create the shard.",
                shard, "shard_unreadable")
        suffixes.add(suffix)
    return samples


def _check_end_marker(shard: str, offset: int) -> None:
    """Raise unless an uncompressed tar has its end-of-archive block at ``offset``.

    ``tarfile`` stops without error at a header it cannot read, or at the end of the file on a
    block boundary, so a truncated or corrupt shard would just look smaller. The stream
    rejects such shards when it reaches them; counting rejects them up front.
    """
    with open(shard, "rb") as f:
        if f.read(8).startswith(COMPRESSED_MAGIC):
            return  # gzip/bzip2/xz: their codecs report truncation while the members are listed
        f.seek(offset)
        block = f.read(tarfile.BLOCKSIZE)
    if block != bytes(tarfile.BLOCKSIZE):
        # The file ending there is a cut copy; a full block that is no header is corrupt data.
        reason = "shard_truncated" if len(block) < tarfile.BLOCKSIZE else "shard_unreadable"
        raise ShardError(
            f"shard {shard} has no tar end-of-archive marker after its last readable member (byte "
            f"{offset}): it is {'truncated' if reason == 'shard_truncated' else 'corrupt'} (e.g. an "
            f"interrupted copy); re-create it or remove it from data.shards.", shard, reason)


def _count_local(shard: str) -> int:
    try:
        if os.stat(shard).st_size == 0:
            raise ShardError(f"shard {shard} is an empty file (0 bytes); re-create it or remove it from "
                             f"data.shards.", shard, "shard_empty")
        with tarfile.open(shard, "r:*") as tar:
            count = _count_grouped(shard, (info.name for info in tar if info.isreg()))
            end = tar.offset
        _check_end_marker(shard, end)
    except DataError:
        raise
    except Exception as exn:
        detail = (str(exn).splitlines() or [""])[0].rstrip(":")  # tarfile lists every codec it tried
        reason = shard_error_reason(exn)
        raise ShardError(
            f"cannot read shard {shard} ({reason}): {type(exn).__name__}: {detail}. The file is missing, "
            f"unreadable, truncated or not a tar archive; re-create it or remove it from data.shards.",
            shard, reason) from exn
    return count


def count_samples(shard: str) -> int:
    """Number of samples in ``shard``, grouped exactly as the input stream groups them.

    Local files are counted from the tar headers; ``pipe:`` and URL shards are streamed
    through webdataset's tar iterators. Raises :class:`~training.data.errors.ShardError`
    naming the shard and the reason when it cannot be read. A readable tar without samples
    gives 0 (:func:`scan_shards` calls that ``shard_empty``).
    """
    if is_remote(shard):
        return sum(1 for _ in raw_samples(shard))
    return _count_local(shard)


# ----------------------------------------------------------------------------- cache


def _local_identity(shard: str) -> dict[str, Any]:
    """What must be unchanged for a cached local count to be reused."""
    try:
        st = os.stat(shard)
    except OSError as exn:
        reason = shard_error_reason(exn)
        raise ShardError(
            f"cannot read shard {shard} ({reason}): {exn.strerror or exn}; re-create it or remove it "
            f"from data.shards.", shard, reason) from exn
    return {"realpath": os.path.realpath(shard), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_cache(cache: Path) -> dict[str, dict[str, Any]]:
    """Cached entries by shard; an unreadable or foreign cache is ignored (it is only a cache)."""
    if not cache.exists():
        return {}
    try:
        data = json.loads(cache.read_text())
        if data.get("version") != CACHE_VERSION or not isinstance(data.get("shards"), dict):
            raise ValueError(f"expected version {CACHE_VERSION} with a 'shards' object")
        return data["shards"]
    except (OSError, ValueError, AttributeError) as exn:
        log.warning("ignoring sample count cache %s (%s); counting again", cache, exn)
        return {}


def _write_cache(cache: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Replace ``cache`` atomically: readers (other ranks) see the old or the new file, never half."""
    try:
        atomic_write_json(cache, {"version": CACHE_VERSION, "shards": entries}, indent=1, sort_keys=True)
    except OSError as exn:
        # The counts are correct either way; failing the run over a cache would be worse.
        log.warning("could not write sample count cache %s: %s", cache, exn)


def _cached_count(shard: str, entry: Optional[dict[str, Any]]) -> tuple[Optional[int], dict[str, Any]]:
    """(cached count or None, identity to store) for one shard."""
    identity = {} if is_remote(shard) else _local_identity(shard)
    if isinstance(entry, dict) and isinstance(entry.get("samples"), int):
        if all(entry.get(k) == v for k, v in identity.items()):
            return entry["samples"], identity
    return None, identity


@dataclass(frozen=True)
class BadShard:
    """A shard left out of the run: its name, why (one of ``BAD_SHARD_REASONS``) and the full message."""

    shard: str
    reason: str
    message: str


@dataclass
class ShardScan:
    """Result of :func:`scan_shards`: every listed shard is either counted or bad."""

    shards: list[str]  # every listed shard, in list order
    counts: dict[str, int]  # usable shards (at least one sample) -> samples, in list order
    bad: list[BadShard]

    @property
    def usable(self) -> list[str]:
        return list(self.counts)

    def fraction(self) -> float:
        """Bad shards / listed shards (0.0 for an empty list)."""
        return len(self.bad) / len(self.shards) if self.shards else 0.0

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.bad:
            out[b.reason] = out.get(b.reason, 0) + 1
        return out

    def _listed(self) -> str:
        return listed([f"{b.shard} ({b.reason})" for b in self.bad], count_rest=True)

    def summary(self) -> str:
        """One line, e.g. ``left out 1 of 9 shards (11.1%): shard_truncated=1: a.tar (shard_truncated)``."""
        reasons = counts_text(self.by_reason())
        line = f"left out {len(self.bad)} of {len(self.shards)} shards ({100 * self.fraction():.1f}%)"
        return line + (f": {reasons}: {self._listed()}" if self.bad else "")

    def check(self, max_bad_fraction: float, world_size: int = 1) -> None:
        """Raise a one-line :class:`DataError` when the usable shards cannot carry the run.

        That is: no usable shard, more bad shards than ``max_bad_fraction`` of the list (the
        same ``data.max_bad_fraction`` that bounds bad samples), or fewer usable shards than
        data workers.
        """
        reasons = counts_text(self.by_reason())
        if not self.counts:
            raise DataError(
                f"none of the {len(self.shards)} shard(s) in data.shards can be used ({reasons}): "
                f"{self._listed()}; re-create these shards or point data.shards at readable, non-empty tars "
                f"(the log lists why each one failed).")
        if self.fraction() > max_bad_fraction:
            raise DataError(
                f"{len(self.bad)} of {len(self.shards)} shards in data.shards are unusable "
                f"({100 * self.fraction():.1f}%, {reasons}), above data.max_bad_fraction={max_bad_fraction}: "
                f"{self._listed()}; re-create or remove these shards, or raise data.max_bad_fraction if "
                f"training without them is acceptable.")
        if len(self.counts) < world_size:
            raise DataSpecError(
                f"only {len(self.counts)} of the {len(self.shards)} shard(s) in data.shards are usable "
                f"({reasons}: {self._listed()}), fewer than the {world_size} data workers, which need one "
                f"shard each; re-create the bad shards, add shards or use fewer workers.")


def scan_shards(shards: list[str], cache: Optional[Path] = None) -> ShardScan:
    """Count the samples of every shard, setting aside the shards that cannot be used.

    A shard that is missing, unreadable (permission denied, not a tar, corrupt, a failing
    ``pipe:`` command), truncated, or holds no sample is recorded in ``ShardScan.bad`` with its
    reason and message (and logged) instead of stopping the scan; the others are counted as in
    :func:`shard_sample_counts`, cache included. Only good counts are cached: bad shards are
    looked at again by the next scan, so a repaired shard is picked up.

    A truncated shard is left out whole, although the samples before the cut could be read:
    its last sample may be incomplete, it was usually cut by an interrupted copy that should
    be repeated, and counting only whole shards keeps the epoch plan and exact resume simple
    (the stream never meets the cut). Call :meth:`ShardScan.check` to apply
    ``data.max_bad_fraction``.
    """
    bad: dict[str, BadShard] = {}
    counts = _count_shards(shards, cache, bad)
    for shard in shards:
        if counts.get(shard) == 0:
            del counts[shard]
            bad[shard] = BadShard(shard, "shard_empty", f"shard {shard} holds no samples (no tar member with "
                                  f"a file extension); re-create it or remove it from data.shards.")
    scan = ShardScan(list(shards), {s: counts[s] for s in shards if s in counts},
                     [bad[s] for s in shards if s in bad])
    for b in scan.bad[:20]:
        log.warning("leaving out shard %s", b.message)
    if len(scan.bad) > 20:
        log.warning("... and %d more bad shards", len(scan.bad) - 20)
    return scan


def shard_sample_counts(shards: list[str], cache: Optional[Path] = None) -> dict[str, int]:
    """``{shard: number of samples}`` for every shard, reusing ``cache`` entries that are still valid.

    Without ``cache`` every shard is counted. With it, local shards whose real path, size and
    mtime match their entry are not opened, remote ones are reused by URL (assumed
    immutable), and the file is rewritten atomically when anything was counted. Entries of
    shards not in ``shards`` are kept: one cache can serve several data sets. A progress bar
    is shown when more than 50 shards need counting.

    Strict: raises the :class:`~training.data.errors.ShardError` of the first shard that cannot
    be read. :func:`scan_shards` sets bad shards aside instead, and also calls empty ones bad.
    """
    counts = _count_shards(shards, cache, bad=None)
    return {shard: counts[shard] for shard in shards}


def _count_shards(shards: list[str], cache: Optional[Path],
                  bad: Optional[dict[str, BadShard]]) -> dict[str, int]:
    """Counts of the readable shards, from ``cache`` where still valid; the cache file is
    rewritten (atomically) when anything was counted. A shard that cannot be read raises its
    :class:`ShardError` when ``bad`` is None (strict), else is recorded in ``bad``."""
    entries = _read_cache(Path(cache)) if cache is not None else {}
    counts: dict[str, int] = {}
    todo: list[tuple[str, dict[str, Any]]] = []
    for shard in shards:
        try:
            cached, identity = _cached_count(shard, entries.get(shard))
        except ShardError as exn:
            _set_aside(bad, shard, exn)
            continue
        if cached is None:
            todo.append((shard, identity))
        else:
            counts[shard] = cached
    bar = progress(todo, desc="counting samples", unit="shard", disable=len(todo) <= _PROGRESS_MIN_SHARDS)
    counted = 0
    for shard, identity in bar:
        try:
            counts[shard] = count_samples(shard)
        except ShardError as exn:
            _set_aside(bad, shard, exn)
            continue
        entries[shard] = {**identity, "samples": counts[shard]}
        counted += 1
    if cache is not None and counted:
        _write_cache(Path(cache), entries)
    return counts


def _set_aside(bad: Optional[dict[str, BadShard]], shard: str, exn: ShardError) -> None:
    """Record ``shard`` as bad in ``bad``, or raise ``exn`` when there is none (strict counting)."""
    if bad is None:
        raise exn
    bad[shard] = BadShard(shard, exn.reason, str(exn))
