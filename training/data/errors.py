"""The data package's user errors (imports nothing heavy, so every data module can use it).

All derive from :class:`training.errors.LorabenchError`: the CLI prints their one-line
message and exits with code 2, without a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from training.errors import LorabenchError

#: How many shards, keys or paths a message names before it says how many more there are.
MAX_LISTED = 5

#: Why a whole shard is left out of a run (see ``index.scan_shards``), one name per cause.
BAD_SHARD_REASONS: tuple[str, ...] = (
    "shard_missing",            # the file (or the pipe:/URL source) does not exist
    "shard_permission_denied",  # the file exists but this process may not read it
    "shard_empty",              # a 0-byte file, or a tar holding no sample at all
    "shard_truncated",          # the data ends early: no end-of-archive marker, cut member, cut gzip stream
    "shard_unreadable",         # not a tar, a corrupt header, duplicate member names, a failing pipe: command
)


class DataError(LorabenchError, RuntimeError):
    """The data cannot be used for training; the message says which shards/keys and why."""


class DataSpecError(DataError, ValueError):
    """A shard list or epoch plan that cannot work (also a ``ValueError``, which it used to be)."""


class ShardError(DataError):
    """One shard cannot be read; ``reason`` is one of :data:`BAD_SHARD_REASONS`."""

    def __init__(self, message: str, shard: str = "", reason: str = "shard_unreadable") -> None:
        super().__init__(message)
        self.shard = shard
        self.reason = reason

    def __reduce__(self):  # keep shard and reason when pickled (Ray hands errors between processes)
        return type(self), (str(self), self.shard, self.reason)


def listed(items: Sequence[str], *, count_rest: bool = False) -> str:
    """The first :data:`MAX_LISTED` items, comma-separated, for a message; more are shown as
    `` ...`` or, with ``count_rest``, as `` and N more``."""
    shown = ", ".join(items[:MAX_LISTED])
    rest = len(items) - MAX_LISTED
    if rest <= 0:
        return shown
    return shown + (f" and {rest} more" if count_rest else " ...")


def counts_text(counts: Mapping[str, int]) -> str:
    """Counts per reason for a message, e.g. ``too_small=1, empty_caption=2``."""
    return ", ".join(f"{r}={n}" for r, n in counts.items())


def shard_error_reason(exn: BaseException) -> str:
    """The :data:`BAD_SHARD_REASONS` entry for an exception raised while reading a shard."""
    if isinstance(exn, ShardError):
        return exn.reason
    if isinstance(exn, FileNotFoundError):
        return "shard_missing"
    if isinstance(exn, PermissionError):
        return "shard_permission_denied"
    if isinstance(exn, EOFError):  # gzip/bz2/xz: "Compressed file ended before the end-of-stream marker"
        return "shard_truncated"
    text = str(exn.args[0]) if exn.args else str(exn)
    if "could not be opened successfully" in text:  # tarfile tried every codec: not a tar at all
        return "shard_unreadable"
    if "truncated header" in text:  # shorter than one 512-byte block: no tar (an error page, say)
        return "shard_unreadable"
    if "empty file" in text:  # tarfile on a 0-byte stream
        return "shard_empty"
    if "unexpected end of data" in text or "truncated" in text:
        return "shard_truncated"
    return "shard_unreadable"
