"""The trainer's input stream: deterministic, resumable, and loud about bad data.

Order of operations per epoch and rank (everything seeded, nothing depends on timing):

1. ``shard_assignment(shards, seed, epoch, rank, world_size)`` picks and orders the shards;
2. the shards' tar members are grouped into raw samples (dicts of bytes) with webdataset's
   tar iterators (``pipe:`` and URL shards work through its ``gopen``);
3. raw, still undecoded samples go through a shuffle buffer driven by
   ``random.Random`` seeded from (seed, epoch, rank);
4. only then are samples decoded; bad ones are counted per reason and skipped.

Balanced epochs (``sample_counts`` given, see ``index.shard_sample_counts``): shards differ
in size, so the ranks' shares of an epoch do too, and a rank whose share ends first would
start its next epoch early (or, with collective ops, hang) while the others still train.
Every rank therefore yields exactly ``epoch_plan(...).samples_per_rank`` good samples per
epoch: the smallest share rounded down to whole batches, computed from the counts alone, so
ranks agree without talking to each other.

- *drop the remainder*: a rank stops its epoch after that many good samples; the rest of
  its share is not read this epoch (the next epoch reshuffles the shard assignment and
  order, so a different part is dropped; only the tail of a shard much larger than the
  smallest share can miss every epoch, so keep shard sizes similar);
- *resample*: a rank whose share runs out of good samples first (bad ones are skipped)
  reads its share again, in the same order, until it has yielded its quota; those samples
  are counted in ``resampled``. A full pass without a single good sample is an error.

Without ``sample_counts`` an epoch is simply one pass over the rank's share, however long.

Resuming is exact: ``state_dict()`` records how many raw samples of the epoch's shuffled
sequence (repeat passes included) were consumed and, for balanced epochs, how many good
samples were yielded; a restored stream replays the epoch, dropping that many raw samples
without decoding them.

Bad samples are counted once per run (keyed by shard and position in the shard), however
often re-reads in later epochs or repeat passes meet them; see :class:`SkipCounter`.

Bad shards (missing, unreadable, empty, truncated or not a tar) are found before training by
:func:`training.data.index.scan_shards`, counted per reason and left out of the shard list
the stream is given, within ``data.max_bad_fraction`` of the shards. A shard that fails while
the stream reads it all the same (changed since the scan, or a stream without a scan) raises
:class:`ShardError` naming the shard and the reason: its samples are part of the epoch plan,
so going on without them would break the plan and exact resume.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
import random
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Optional

import torch
from webdataset import tariterators

from .captions import TOO_LONG, TRUNCATED, describe_over
from .decode import BadSample, caption_of, check_key, decode_image, decode_video, media_of
from .errors import DataError, ShardError, shard_error_reason
from .shards import EpochPlan, epoch_plan, epoch_seed, shard_assignment

__all__ = ["DataError", "ShardError", "ShardStream", "SkipCounter", "batches", "collate"]

log = logging.getLogger("lorabench.data")


# ----------------------------------------------------------------------------- skip counter


def _pack(marks: bytes) -> str:
    return base64.b64encode(zlib.compress(bytes(marks), 6)).decode("ascii")


def _unpack(text: str) -> bytearray:
    return bytearray(zlib.decompress(base64.b64decode(text)))


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{r}={n}" for r, n in counts.items())


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
            line += ": " + _counts_text(self.skips)
        if self.kept:
            line += f"; used {sum(self.kept.values())} with changes: {_counts_text(self.kept)}"
        if self.shard_skips:
            pct = 100 * self.bad_shards / max(self.shards_total, 1)
            line += (f"; left out {self.bad_shards} of {self.shards_total} shards ({pct:.1f}%): "
                     f"{_counts_text(self.shard_skips)}")
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


# ----------------------------------------------------------------------------- raw samples


def _stream_seed(seed: int, epoch: int, rank: int) -> int:
    # Stable integer mixing (never hash(), which is salted per process).
    return epoch_seed(seed, epoch) * 1_000_003 + rank


class _EndCheckingReader:
    """Read-through wrapper that tells whether a tar stream ended with its end marker.

    Python's tarfile (and so webdataset) stops silently when a stream ends exactly at a
    512-byte block boundary, so a shard cut short there would just look smaller. A complete
    tar ends with zero blocks; data running out on a non-zero block means truncation.
    """

    _COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: checked by their codecs

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.head = b""
        self.tail = b""
        self.hit_eof = False

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if len(self.head) < 8:
            self.head = (self.head + data)[:8]
        if not data or (n is not None and 0 < len(data) < n):
            self.hit_eof = True
        self.tail = (self.tail + data)[-512:]
        return data

    def close(self) -> None:
        self.raw.close()

    def truncated(self) -> bool:
        compressed = self.head.startswith(self._COMPRESSED)
        return self.hit_eof and not compressed and self.tail != bytes(512)


def _raw_samples(shard: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, in tar order: ``__key__``, ``__url__`` (the shard), ``__index__``
    (the sample's position in the shard, from 0) and the member bytes.

    Raises :class:`ShardError` naming the shard, with the reason (see
    :data:`~training.data.errors.BAD_SHARD_REASONS`), when it cannot be read to its end.
    """
    completed = False
    source: dict[str, Any] = {}
    try:
        # url_opener/gopen open local paths, pipe: commands and URLs alike. Only the tar
        # iterators are used: webdataset's decoders (which include pickle) are never involved.
        for source in tariterators.url_opener([{"url": shard}]):
            reader = source["stream"] = _EndCheckingReader(source["stream"])
            files = tariterators.tar_file_expander([source])
            for index, sample in enumerate(tariterators.group_by_keys(files)):
                sample["__index__"] = index
                yield sample
            if reader.truncated():
                raise ShardError(
                    f"shard {shard} ends without the tar end-of-archive marker: it is truncated "
                    f"(e.g. an interrupted copy or download); re-create it or remove it from data.shards.",
                    shard, "shard_truncated")
        completed = True
    except DataError:
        raise
    except Exception as exn:
        # webdataset appends the stream and URL to exception args; keep just the message.
        detail = exn.args[0] if exn.args and isinstance(exn.args[0], str) else str(exn)
        detail = " ".join(detail.split(" @ <", 1)[0].split())
        reason = shard_error_reason(exn)
        stream, source["stream"] = source.get("stream"), None
        try:
            if stream is not None:
                stream.close()  # a failing pipe: command shows up here (its output looks empty)
        except Exception as close_exn:
            reason, detail = "shard_unreadable", f"{detail} ({close_exn})"
        raise ShardError(
            f"cannot read shard {shard} ({reason}): {type(exn).__name__}: {detail}. The file is missing, "
            f"unreadable, truncated or not a tar archive (or its pipe: command failed); re-create it or "
            f"remove it from data.shards.", shard, reason) from exn
    finally:
        stream = source.get("stream")
        if stream is not None:
            try:
                stream.close()  # pipe: streams report the command's exit status here
            except Exception as exn:
                # On an early stop (GeneratorExit) the command was cut off on purpose.
                if completed:
                    raise ShardError(f"closing shard {shard} failed: {exn}", shard, "shard_unreadable") from exn


def _shuffled(items: Iterable[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Buffer shuffle: each output is drawn at random from the next ``bufsize`` items."""
    if bufsize <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(bufsize)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


# ----------------------------------------------------------------------------- stream


class ShardStream:
    """Endless stream of decoded samples ``{"key", "pixels", "caption"}``, epoch after epoch.

    ``pixels`` is float32 in [-1, 1], ``(3, frames, height, width)`` for video and
    ``(3, height, width)`` for images. Bad samples are counted in ``self.counter`` and
    skipped; the caller decides when too many is too many (``counter.check``).

    Iterating continues from the current position; use one live iterator at a time (each
    iterator updates the stream's position as it goes).

    With ``sample_counts`` (``{shard: samples}`` for every shard) epochs are balanced: each of
    the ``world_size`` ranks yields exactly ``epoch_plan(...).samples_per_rank`` samples per
    epoch, a multiple of ``batch_size``, dropping the rest of a larger share and reading a
    share again when bad samples leave it short (see the module docstring). ``last_plan``
    holds the current epoch's :class:`EpochPlan` (None without ``sample_counts``). Without
    them an epoch is one pass over the rank's share and ``batch_size`` is unused.

    ``fps`` (video only) resamples each clip to that frame rate before taking ``frames``
    frames (see :func:`~training.data.decode.decode_video`); None keeps the native rate.

    ``caption_check`` (e.g. a :class:`~training.data.captions.CaptionLengthCheck`) maps a
    caption to ``(action, over)`` for captions longer than the text encoder reads: ``"keep"``,
    ``"truncate"`` (used, counted as ``caption_truncated``), ``"skip"`` (skipped as
    ``caption_too_long``) or ``"error"`` (raises :class:`DataError`). None: not checked.

    Every sample is counted once per run in ``counter``, on its first read (see
    :meth:`SkipCounter.first_read`); re-reads in later epochs or repeat passes are not counted.
    """

    def __init__(
        self,
        shards: list[str],
        *,
        modality: str,
        frames: int,
        height: int,
        width: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 64,
        counter: Optional[SkipCounter] = None,
        sample_counts: Optional[Mapping[str, int]] = None,
        batch_size: int = 1,
        fps: Optional[float] = None,
        caption_check: Optional[Callable[[str], tuple[str, Mapping[str, tuple[int, int]]]]] = None,
    ) -> None:
        if modality not in ("video", "image"):
            raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
        if frames < 1 or height < 1 or width < 1:
            raise ValueError(f"frames, height and width must be >= 1, got {frames}, {height}, {width}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number or None, got {fps!r}")
        self.shards = list(shards)
        shard_assignment(self.shards, seed, 0, rank, world_size)  # fail now, not at first batch
        self.modality = modality
        self.frames, self.height, self.width = frames, height, width
        self.fps = fps  # video only: resample clips to this rate (None: native rate)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.counter = counter if counter is not None else SkipCounter()
        self.batch_size = batch_size
        self.sample_counts = dict(sample_counts) if sample_counts is not None else None
        self.caption_check = caption_check
        self._epoch = 0
        self._position = 0
        self._yielded = 0
        #: Good samples yielded from repeat passes (balanced epochs) by this object; not saved.
        self.resampled = 0
        self.last_plan: Optional[EpochPlan] = None
        self._logged_epoch: Optional[int] = None
        self._logged_shape: Optional[str] = None  # the last epoch split logged at INFO
        if self.sample_counts is not None:
            self._plan(0)  # fail now (missing counts, share below one batch), not at first batch

    # -- resume ----------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """Where the stream is, as plain ints.

        ``{"epoch": e, "position": n, "yielded": g}`` with balanced epochs: n raw samples (good
        or bad, repeat passes included) of epoch e consumed, g good ones yielded. Without
        ``sample_counts`` the form is ``{"epoch": e, "position": n}``, as before.
        """
        if self.sample_counts is None:
            return {"epoch": self._epoch, "position": self._position}
        return {"epoch": self._epoch, "position": self._position, "yielded": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()``; the skip counter is restored separately.

        Either form of :meth:`state_dict` is accepted. A state without ``yielded`` taken mid-epoch
        (written without ``sample_counts``) resumes a balanced stream as if nothing had been
        yielded yet in that epoch: the rank yields a full quota from that position, so all
        ranks stay in step, at the cost of seeing some samples of that epoch twice.
        """
        epoch, position, yielded = state.get("epoch"), state.get("position"), state.get("yielded", 0)
        if not all(isinstance(v, int) and v >= 0 for v in (epoch, position, yielded)) or yielded > position:
            raise ValueError(
                f"bad data stream state {state!r}: need non-negative ints 'epoch' and 'position' "
                f"and optionally 'yielded' (at most 'position')"
            )
        if self.sample_counts is not None and "yielded" not in state and position > 0:
            log.warning("data stream state %s has no 'yielded' count (written without balanced "
                        "epochs): rank %d yields a full epoch quota from there", state, self.rank)
        self._epoch, self._position, self._yielded = epoch, position, yielded
        if self.sample_counts is not None:
            self._plan(epoch)

    # -- iteration -------------------------------------------------------------

    def _epoch_samples(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Raw samples of ``epoch`` for this rank, in shuffled order (not decoded)."""
        shards = shard_assignment(self.shards, self.seed, epoch, self.rank, self.world_size)
        raw = (sample for shard in shards for sample in _raw_samples(shard))
        rng = random.Random(_stream_seed(self.seed, epoch, self.rank))
        return _shuffled(raw, self.shuffle_buffer, rng)

    def _decode(self, sample: dict[str, Any]) -> Optional[dict[str, Any]]:
        key = sample["__key__"]
        where = f"{sample.get('__url__', '?')}:{key}"
        first = self.counter.first_read(sample.get("__url__", "?"), sample.get("__index__"))
        kept: Optional[str] = None
        try:
            check_key(key)
            caption = caption_of(sample)  # cheap checks first: no decoding for caption-less samples
            if self.caption_check is not None:
                kept = self._check_caption(caption, where)
            _, data = media_of(sample, self.modality)
            if self.modality == "video":
                pixels = decode_video(data, self.frames, self.height, self.width, fps=self.fps)
            else:
                pixels = decode_image(data, self.height, self.width)
        except BadSample as exn:
            if first:
                self.counter.add_skip(exn.reason, where)
            return None
        if first:
            self.counter.add_ok()
            if kept is not None:
                self.counter.add_kept(kept, where)
        return {"key": key, "pixels": pixels, "caption": caption}

    def _check_caption(self, caption: str, where: str) -> Optional[str]:
        """Apply ``caption_check``: None (fits) or ``caption_truncated``; raises for skip and error."""
        assert self.caption_check is not None
        action, over = self.caption_check(caption)
        if action == "keep":
            return None
        if action == "truncate":
            return TRUNCATED
        if action == "skip":
            raise BadSample(TOO_LONG, describe_over(over))
        raise DataError(
            f"caption of sample {where} has {describe_over(over)} and data.long_captions=error: "
            f"shorten it, or set data.long_captions=truncate (train on its first tokens) or skip.")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.sample_counts is None:
            return self._iter_passes()
        return self._iter_balanced()

    def _iter_passes(self) -> Iterator[dict[str, Any]]:
        """Epochs of one pass over the rank's share each, however many samples that gives."""
        while True:
            epoch, start = self._epoch, self._position
            consumed = good = 0
            for raw in self._epoch_samples(epoch):
                consumed += 1
                if consumed <= start:
                    continue  # resuming: already consumed before the checkpoint, not decoded
                self._position = consumed
                sample = self._decode(raw)
                if sample is not None:
                    good += 1
                    yield sample
            if consumed < start:
                raise DataError(
                    f"cannot resume: the checkpoint is at sample {start} of epoch {epoch}, but "
                    f"rank {self.rank}'s shards hold only {consumed} samples in that epoch. The "
                    f"shards, seed or number of workers changed since the checkpoint was written."
                )
            if start == 0 and good == 0:  # after a mid-epoch resume, earlier samples may have been good
                raise self._no_good_samples(epoch, consumed)
            self._epoch, self._position = epoch + 1, 0

    # -- balanced epochs -------------------------------------------------------

    def _plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` (kept in ``last_plan``; pure, so recomputing it is safe)."""
        if self.last_plan is None or self.last_plan.epoch != epoch:
            assert self.sample_counts is not None
            self.last_plan = epoch_plan(self.shards, self.sample_counts, self.seed, epoch,
                                        self.world_size, self.batch_size)
        return self.last_plan

    def _iter_balanced(self) -> Iterator[dict[str, Any]]:
        """Epochs of exactly ``samples_per_rank`` good samples each (see the module docstring)."""
        while True:
            plan = self._plan(self._epoch)
            if self.rank == 0 and self._logged_epoch != plan.epoch:  # every rank has the same plan
                # Once, and again only when the split changes: a line per epoch is noise on long runs.
                shape = plan.summary().split(":", 1)[-1]
                log.log(logging.INFO if shape != self._logged_shape else logging.DEBUG, "data %s", plan.summary())
                self._logged_epoch, self._logged_shape = plan.epoch, shape
            if self._yielded < plan.samples_per_rank:  # else: restored right after the epoch's last sample
                yield from self._balanced_epoch(plan)
            self._epoch, self._position, self._yielded = plan.epoch + 1, 0, 0

    def _balanced_epoch(self, plan: EpochPlan) -> Iterator[dict[str, Any]]:
        """The rest of ``plan.epoch`` from the current position: passes over the share until the quota."""
        epoch, start, quota = plan.epoch, self._position, plan.samples_per_rank
        consumed = 0
        for repeat in itertools.count():
            pass_start, good = consumed, 0
            for raw in self._epoch_samples(epoch):
                consumed += 1
                if consumed <= start:
                    continue  # resuming: already consumed before the checkpoint, not decoded
                self._position = consumed
                sample = self._decode(raw)
                if sample is None:
                    continue
                good += 1
                self._yielded += 1
                if repeat:
                    self.resampled += 1
                yield sample
                if self._yielded >= quota:
                    return  # drop the remainder of the share for this epoch
            self._check_pass_length(plan, consumed - pass_start)
            if good == 0 and pass_start >= start:  # judged only on passes decoded in full
                raise self._no_good_samples(epoch, consumed - pass_start)

    def _check_pass_length(self, plan: EpochPlan, length: int) -> None:
        """A pass must hold as many samples as counted; otherwise the plan (and resume) is off."""
        expected = plan.raw_samples[self.rank]
        if length != expected:
            shards = plan.shards[self.rank]
            listed = ", ".join(shards[:5]) + (" ..." if len(shards) > 5 else "")
            raise DataError(
                f"rank {self.rank}'s shards in epoch {plan.epoch} ({listed}) hold {length} samples, "
                f"but the sample counts say {expected}: the shards changed after they were counted. "
                f"Count them again (delete the sample count cache if one is used) and restart; "
                f"a checkpoint taken with the old shards cannot be resumed exactly."
            )

    def _no_good_samples(self, epoch: int, consumed: int) -> DataError:
        shards = shard_assignment(self.shards, self.seed, epoch, self.rank, self.world_size)
        listed = ", ".join(shards[:5]) + (" ..." if len(shards) > 5 else "")
        need = f"at least {self.width}x{self.height}"
        if self.modality == "video":
            need += f" and {self.frames} frames" + (f" at {self.fps:g} fps" if self.fps is not None else "")
        return DataError(
            f"epoch {epoch} produced no usable samples on rank {self.rank} from shards {listed} "
            f"({consumed} raw samples; {self.counter.summary()}; e.g. {self.counter.examples_text('; ')}). "
            f"Check that the shards hold captioned {self.modality} samples, {need}."
        )


# ----------------------------------------------------------------------------- batching


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into ``{"pixels": (B, ...), "captions": [...], "keys": [...]}``."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "captions": [s["caption"] for s in samples],
        "keys": [s["key"] for s in samples],
    }


def batches(
    stream: Iterable[dict[str, Any]], batch_size: int, drop_last: bool = True
) -> Iterator[dict[str, Any]]:
    """Collated batches of ``batch_size`` samples pulled lazily from ``stream``.

    Samples are pulled only as a batch fills, so after a batch is yielded the stream's
    ``state_dict()`` points just past that batch's last sample. A trailing partial batch
    (finite streams only) is dropped unless ``drop_last`` is False.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buf: list[dict[str, Any]] = []
    for sample in stream:
        buf.append(sample)
        if len(buf) == batch_size:
            yield collate(buf)
            buf = []
    if buf and not drop_last:
        yield collate(buf)
