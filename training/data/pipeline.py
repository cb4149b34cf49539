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

A shard that cannot be read (missing, truncated or not a tar, a failing ``pipe:``
command) raises :class:`DataError` naming the shard instead of being counted as a skip:
it loses many samples at once and usually means a broken copy that should be fixed.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

import torch
from webdataset import tariterators

from .decode import BadSample, caption_of, decode_image, decode_video, media_of
from .shards import EpochPlan, epoch_plan, epoch_seed, shard_assignment
from training.errors import LorabenchError

log = logging.getLogger("lorabench.data")


class DataError(LorabenchError, RuntimeError):
    """The data cannot be used for training; the message says which shards/keys and why."""


# ----------------------------------------------------------------------------- skip counter


class SkipCounter:
    """Counts samples seen and skipped per reason, keeping a few example keys per reason."""

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples
        self.seen = 0
        self.skips: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    @property
    def skipped(self) -> int:
        return sum(self.skips.values())

    def add_ok(self) -> None:
        """Record a sample that decoded fine."""
        self.seen += 1

    def add_skip(self, reason: str, key: str) -> None:
        """Record a skipped sample and, for the first few per reason, its key."""
        self.seen += 1
        self.skips[reason] = self.skips.get(reason, 0) + 1
        keys = self.examples.setdefault(reason, [])
        if len(keys) < self.max_examples:
            keys.append(key)

    def fraction(self) -> float:
        """Skipped / seen (0.0 before any sample)."""
        return self.skipped / self.seen if self.seen else 0.0

    def summary(self) -> str:
        """One line, e.g. ``skipped 3 of 40 samples (7.5%): too_small=1, empty_caption=2``."""
        line = f"skipped {self.skipped} of {self.seen} samples ({100 * self.fraction():.1f}%)"
        if self.skips:
            line += ": " + ", ".join(f"{r}={n}" for r, n in self.skips.items())
        return line

    def examples_text(self) -> str:
        """The recorded example keys, one reason per line."""
        return "\n".join(f"  {r}: {', '.join(self.examples.get(r, []))}" for r in self.skips)

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
                f"data.max_bad_fraction={max_bad_fraction}.\nFirst offending samples "
                f"(shard:key):\n{self.examples_text()}\nFix or drop these samples from the "
                f"shards, or raise data.max_bad_fraction if losing them is acceptable."
            )

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state."""
        return {
            "seen": self.seen,
            "skips": dict(self.skips),
            "examples": {r: list(k) for r, k in self.examples.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.seen = int(state["seen"])
        self.skips = {str(r): int(n) for r, n in state["skips"].items()}
        self.examples = {str(r): [str(k) for k in ks] for r, ks in state.get("examples", {}).items()}


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
    """Raw samples (``__key__``, ``__url__`` and member bytes) of one shard, in tar order."""
    completed = False
    source: dict[str, Any] = {}
    try:
        # url_opener/gopen open local paths, pipe: commands and URLs alike. Only the tar
        # iterators are used: webdataset's decoders (which include pickle) are never involved.
        for source in tariterators.url_opener([{"url": shard}]):
            reader = source["stream"] = _EndCheckingReader(source["stream"])
            files = tariterators.tar_file_expander([source])
            yield from tariterators.group_by_keys(files)
            if reader.truncated():
                raise DataError(
                    f"shard {shard} ends without the tar end-of-archive marker: it is truncated "
                    f"(e.g. an interrupted copy or download); re-create it or remove it from data.shards."
                )
        completed = True
    except DataError:
        raise
    except Exception as exn:
        # webdataset appends the stream and URL to exception args; keep just the message.
        detail = exn.args[0] if exn.args and isinstance(exn.args[0], str) else str(exn)
        detail = detail.split(" @ <", 1)[0]
        raise DataError(
            f"cannot read shard {shard}: {type(exn).__name__}: {detail}. The file is missing, "
            f"truncated or not a tar archive (or its pipe: command failed); re-create it or "
            f"remove it from data.shards."
        ) from exn
    finally:
        stream = source.get("stream")
        if stream is not None:
            try:
                stream.close()  # pipe: streams report the command's exit status here
            except Exception as exn:
                # On an early stop (GeneratorExit) the command was cut off on purpose.
                if completed:
                    raise DataError(f"closing shard {shard} failed: {exn}") from exn


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
        self._epoch = 0
        self._position = 0
        self._yielded = 0
        #: Good samples yielded from repeat passes (balanced epochs) by this object; not saved.
        self.resampled = 0
        self.last_plan: Optional[EpochPlan] = None
        self._logged_epoch: Optional[int] = None
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
        try:
            caption = caption_of(sample)  # cheap checks first: no decoding for caption-less samples
            _, data = media_of(sample, self.modality)
            if self.modality == "video":
                pixels = decode_video(data, self.frames, self.height, self.width, fps=self.fps)
            else:
                pixels = decode_image(data, self.height, self.width)
        except BadSample as exn:
            self.counter.add_skip(exn.reason, f"{sample.get('__url__', '?')}:{key}")
            return None
        self.counter.add_ok()
        return {"key": key, "pixels": pixels, "caption": caption}

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
                log.info("data %s", plan.summary())
                self._logged_epoch = plan.epoch
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
            f"({consumed} raw samples; {self.counter.summary()}).\n{self.counter.examples_text()}\n"
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
