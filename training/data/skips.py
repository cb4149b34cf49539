"""The skip counter: samples seen and skipped per reason, each counted once per run."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable
from typing import Any, Optional

from .errors import DataError, counts_text


def _pack(marks: bytes) -> str:
    return base64.b64encode(zlib.compress(bytes(marks), 6)).decode("ascii")


def _unpack(text: str) -> bytearray:
    return bytearray(zlib.decompress(base64.b64decode(text)))


class SkipCounter:
    """Counts samples seen and skipped per reason, keeping a few example keys per reason.

    Each sample is counted once per run, however often it is read (later epochs, the repeat
    passes of balanced epochs): :meth:`first_read` keeps one bit per sample, keyed by its shard
    and its position in the shard (two groups of tar members may share a key; positions are
    unique), and the stream counts a sample only on its first read. So ``seen`` is the number
    of distinct samples decoded and ``fraction()`` the share of them that is bad, in the first
    epoch as after many. The bits travel in :meth:`state_dict` (compressed, a few bytes per
    thousand samples), so a resumed run does not count again what it counted before.

    Besides skips it counts

    - ``kept``: samples used with a change the user should know about, per reason
      (``caption_truncated``, see :mod:`training.data.captions`); not skips, so not part of
      ``fraction()``;
    - bad shards (``shard_skips`` per reason of all ``shards_total``), recorded once from
      :func:`training.data.index.scan_shards` with :meth:`record_shards`.
    """

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples
        self.seen = 0
        self.skips: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.kept: dict[str, int] = {}
        self.kept_examples: dict[str, list[str]] = {}
        self.shards_total = 0
        self.shard_skips: dict[str, int] = {}
        self.shard_examples: dict[str, list[str]] = {}
        self._marks: dict[str, bytearray] = {}  # shard -> one bit per sample position, unpacked on use
        self._packed: dict[str, str] = {}  # shard -> packed bits as of the last state_dict/load
        self._dirty: set[str] = set()

    @property
    def skipped(self) -> int:
        return sum(self.skips.values())

    @property
    def bad_shards(self) -> int:
        return sum(self.shard_skips.values())

    def first_read(self, shard: str, index: Optional[int]) -> bool:
        """True the first time sample ``index`` of ``shard`` is read in this run (None: always True)."""
        if index is None:
            return True
        marks = self._marks.get(shard)
        if marks is None:
            packed = self._packed.get(shard)
            marks = self._marks[shard] = _unpack(packed) if packed else bytearray()
        byte, bit = divmod(index, 8)
        if byte >= len(marks):
            marks.extend(bytes(byte + 1 - len(marks)))
        if marks[byte] >> bit & 1:
            return False
        marks[byte] |= 1 << bit
        self._dirty.add(shard)
        return True

    def add_ok(self) -> None:
        """Record a sample that decoded fine."""
        self.seen += 1

    def _note(self, counts: dict[str, int], examples: dict[str, list[str]], reason: str, key: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1
        keys = examples.setdefault(reason, [])
        if len(keys) < self.max_examples:
            keys.append(key)

    def add_skip(self, reason: str, key: str) -> None:
        """Record a skipped sample and, for the first few per reason, its key."""
        self.seen += 1
        self._note(self.skips, self.examples, reason, key)

    def add_kept(self, reason: str, key: str) -> None:
        """Record a change to a sample that is still used (after its :meth:`add_ok`)."""
        self._note(self.kept, self.kept_examples, reason, key)

    def record_shards(self, total: int, bad: Iterable[tuple[str, str]]) -> None:
        """Record the shard scan: ``total`` shards listed, ``bad`` as ``(shard, reason)`` pairs."""
        self.shards_total = int(total)
        self.shard_skips, self.shard_examples = {}, {}
        for shard, reason in bad:
            self._note(self.shard_skips, self.shard_examples, reason, shard)

    def fraction(self) -> float:
        """Skipped / seen (0.0 before any sample)."""
        return self.skipped / self.seen if self.seen else 0.0

    def summary(self) -> str:
        """One line, e.g. ``skipped 3 of 40 distinct samples read (7.5%): too_small=1, empty_caption=2``.

        Truncated captions and left-out shards follow when there are any, e.g.
        ``...; used 2 with changes: caption_truncated=2; left out 1 of 9 shards (11.1%): shard_truncated=1``.
        """
        line = f"skipped {self.skipped} of {self.seen} distinct samples read ({100 * self.fraction():.1f}%)"
        if self.skips:
            line += ": " + counts_text(self.skips)
        if self.kept:
            line += f"; used {sum(self.kept.values())} with changes: {counts_text(self.kept)}"
        if self.shard_skips:
            pct = 100 * self.bad_shards / max(self.shards_total, 1)
            line += (f"; left out {self.bad_shards} of {self.shards_total} shards ({pct:.1f}%): "
                     f"{counts_text(self.shard_skips)}")
        return line

    def report(self, examples: bool = False) -> dict[str, Any]:
        """Counts for metrics.jsonl / result.json: totals and per-reason dicts (plus examples if asked)."""
        out: dict[str, Any] = {
            "seen_samples": self.seen,
            "skipped_samples": self.skipped,
            "skips_by_reason": dict(self.skips),
            "kept_by_reason": dict(self.kept),
            "bad_shards": self.bad_shards,
            "bad_shards_by_reason": dict(self.shard_skips),
        }
        if examples:
            out["skip_examples"] = {r: list(k) for r, k in self.examples.items()}
            out["kept_examples"] = {r: list(k) for r, k in self.kept_examples.items()}
            out["bad_shard_examples"] = {r: list(k) for r, k in self.shard_examples.items()}
        return out

    def examples_text(self, sep: str = "\n") -> str:
        """The recorded example keys, one reason per line (or per ``sep``)."""
        indent = "  " if sep == "\n" else ""
        return sep.join(f"{indent}{r}: {', '.join(self.examples.get(r, []))}" for r in self.skips)

    def check(self, max_bad_fraction: float, min_seen: int = 20, final: bool = False) -> None:
        """Raise :class:`DataError` when the skipped fraction exceeds ``max_bad_fraction``.

        Judged only once ``seen >= min_seen`` (a couple of early bad samples say little about
        the data set), and always when ``final`` is set (end of training).
        """
        if self.seen == 0 or (not final and self.seen < min_seen):
            return
        if self.fraction() > max_bad_fraction:
            raise DataError(
                f"too many bad samples: {self.summary()}, above "
                f"data.max_bad_fraction={max_bad_fraction}; first offending samples "
                f"(shard:key): {self.examples_text('; ')}. Fix or drop these samples from the "
                f"shards, or raise data.max_bad_fraction if losing them is acceptable."
            )

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state (the per-sample bits packed: zlib + base64 per shard)."""
        for shard in self._dirty:
            self._packed[shard] = _pack(self._marks[shard])
        self._dirty.clear()
        return {
            "seen": self.seen,
            "skips": dict(self.skips),
            "examples": {r: list(k) for r, k in self.examples.items()},
            "kept": dict(self.kept),
            "kept_examples": {r: list(k) for r, k in self.kept_examples.items()},
            "shards": {"total": self.shards_total, "skips": dict(self.shard_skips),
                       "examples": {r: list(k) for r, k in self.shard_examples.items()}},
            "read": dict(self._packed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (older states without the newer fields too).

        Shard counts describe the shard list as scanned when this run started, so a counter
        that already has them (:meth:`record_shards` was called) keeps its own; a fresh counter
        takes them from ``state``. A state without per-sample bits (written before they
        existed) restores the counts, and samples read before it may be counted once more.
        """
        self.seen = int(state["seen"])
        self.skips = {str(r): int(n) for r, n in state["skips"].items()}
        self.examples = {str(r): [str(k) for k in ks] for r, ks in state.get("examples", {}).items()}
        self.kept = {str(r): int(n) for r, n in state.get("kept", {}).items()}
        self.kept_examples = {str(r): [str(k) for k in ks] for r, ks in state.get("kept_examples", {}).items()}
        shards = state.get("shards")
        if isinstance(shards, dict) and self.shards_total == 0:
            self.shards_total = int(shards.get("total", 0))
            self.shard_skips = {str(r): int(n) for r, n in shards.get("skips", {}).items()}
            self.shard_examples = {str(r): [str(k) for k in ks] for r, ks in shards.get("examples", {}).items()}
        self._packed = dict(state.get("read", {}))
        self._marks, self._dirty = {}, set()
