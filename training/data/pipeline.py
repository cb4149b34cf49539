"""The trainer's input stream: deterministic, resumable, and loud about bad data.

Order of operations per epoch and rank (everything seeded, nothing depends on timing):

1. ``shard_assignment(shards, seed, epoch, rank, world_size)`` picks and orders the shards;
2. the shards' tar members are grouped into raw samples (dicts of bytes) with webdataset's
   tar iterators (``pipe:`` and URL shards work through its ``gopen``; see :mod:`.reader`);
3. raw, still undecoded samples go through a shuffle buffer driven by
   ``random.Random`` seeded from (seed, epoch, rank);
4. only then are samples decoded; bad ones are counted per reason and skipped.

Balanced epochs (``sample_counts``, see ``index.scan_shards``): shards differ in size, so the
ranks' shares of an epoch do too, and a rank whose share ends first would start its next
epoch early (or, with collective ops, hang) while the others still train. Every rank
therefore yields exactly ``epoch_plan(...).samples_per_rank`` good samples per epoch: the
smallest share rounded down to whole batches, computed from the counts alone, so ranks agree
without talking to each other.

- *drop the remainder*: a rank stops its epoch after that many good samples; the rest of
  its share is not read this epoch (the next epoch reshuffles the shard assignment and
  order, so a different part is dropped; only the tail of a shard much larger than the
  smallest share can miss every epoch, so keep shard sizes similar);
- *resample*: a rank whose share runs out of good samples first (bad ones are skipped)
  reads its share again, in the same order, until it has yielded its quota; those samples
  are counted in ``resampled``. A full pass without a single good sample is an error.

Resuming is exact: ``state_dict()`` records how many raw samples of the epoch's shuffled
sequence (repeat passes included) were consumed and how many good samples were yielded; a
restored stream replays the epoch, dropping that many raw samples without decoding them.

Bad samples are counted once per run (keyed by shard and position in the shard), however
often re-reads in later epochs or repeat passes meet them; see :class:`SkipCounter`.

Bad shards (missing, unreadable, empty, truncated or not a tar) are found before training by
:func:`training.data.index.scan_shards`, counted per reason and left out of the shard list
the stream is given, within ``data.max_bad_fraction`` of the shards. A shard that fails while
the stream reads it all the same (changed since the scan) raises :class:`ShardError` naming
the shard and the reason: its samples are part of the epoch plan, so going on without them
would break the plan and exact resume.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Optional

import torch

from .captions import TOO_LONG, TRUNCATED, describe_over
from .decode import BadSample, caption_of, check_fps, check_key, decode_image, decode_video, media_of
from .errors import DataError, ShardError, listed
from .reader import raw_samples
from .shards import EpochPlan, epoch_plan, epoch_seed, shard_assignment
from .skips import SkipCounter

__all__ = ["DataError", "ShardError", "ShardStream", "SkipCounter", "batches", "collate"]

log = logging.getLogger("lorabench.data")


def _stream_seed(seed: int, epoch: int, rank: int) -> int:
    # Stable integer mixing (never hash(), which is salted per process).
    return epoch_seed(seed, epoch) * 1_000_003 + rank


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


# ----------------------------------------------------------------------------- decoding


class MediaDecoder:
    """Raw sample -> ``({"key", "pixels", "caption"}, kept)``: the checks and decoding one sample
    goes through, shared by the training stream and the precompute stage (so a cached sample is
    exactly what on-the-fly training would have decoded, and skipped for the same reasons).

    Raises :class:`BadSample` for a sample to skip; ``kept`` is None or the reason a sample is
    used in a changed form (``caption_truncated``). See :class:`ShardStream` for the arguments.
    """

    def __init__(self, modality: str, frames: int, height: int, width: int, fps: Optional[float] = None,
                 caption_check: Optional[Callable[[str], tuple[str, Mapping[str, tuple[int, int]]]]] = None
                 ) -> None:
        if modality not in ("video", "image"):
            raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
        if frames < 1 or height < 1 or width < 1:
            raise ValueError(f"frames, height and width must be >= 1, got {frames}, {height}, {width}")
        check_fps(fps)
        self.modality, self.frames, self.height, self.width = modality, frames, height, width
        self.fps, self.caption_check = fps, caption_check

    def __call__(self, sample: dict[str, Any], where: str) -> tuple[dict[str, Any], Optional[str]]:
        key = sample["__key__"]
        check_key(key)
        caption = caption_of(sample)  # cheap checks first: no decoding for caption-less samples
        kept = self._check_caption(caption, where) if self.caption_check is not None else None
        _, data = media_of(sample, self.modality)
        if self.modality == "video":
            pixels = decode_video(data, self.frames, self.height, self.width, fps=self.fps)
        else:
            pixels = decode_image(data, self.height, self.width)
        return {"key": key, "pixels": pixels, "caption": caption}, kept

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

    def needs(self) -> str:
        """What a usable sample must hold, for the no-usable-samples error."""
        need = f"captioned {self.modality} samples, at least {self.width}x{self.height}"
        if self.modality == "video":
            need += f" and {self.frames} frames" + (f" at {self.fps:g} fps" if self.fps is not None else "")
        return need


Decoder = Callable[[dict[str, Any], str], tuple[dict[str, Any], Optional[str]]]


# ----------------------------------------------------------------------------- stream


class ShardStream:
    """Endless stream of decoded samples ``{"key", "pixels", "caption"}``, epoch after epoch.

    ``pixels`` is float32 in [-1, 1], ``(3, frames, height, width)`` for video and
    ``(3, height, width)`` for images. Bad samples are counted in ``self.counter`` and
    skipped; the caller decides when too many is too many (``counter.check``).

    Iterating continues from the current position; use one live iterator at a time (each
    iterator updates the stream's position as it goes).

    ``sample_counts`` (``{shard: samples}`` for every shard, e.g. ``ShardScan.counts``) balances
    the epochs: each of the ``world_size`` ranks yields exactly ``epoch_plan(...).samples_per_rank``
    samples per epoch, a multiple of ``batch_size``, dropping the rest of a larger share and
    reading a share again when bad samples leave it short (see the module docstring).
    ``last_plan`` holds the current epoch's :class:`EpochPlan`.

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
        sample_counts: Mapping[str, int],
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 64,
        counter: Optional[SkipCounter] = None,
        batch_size: int = 1,
        fps: Optional[float] = None,
        caption_check: Optional[Callable[[str], tuple[str, Mapping[str, tuple[int, int]]]]] = None,
        decoder: Optional[Decoder] = None,
        open_shard: Callable[[str], Iterator[dict[str, Any]]] = raw_samples,
    ) -> None:
        self.media = MediaDecoder(modality, frames, height, width, fps, caption_check)
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shards = list(shards)
        shard_assignment(self.shards, seed, 0, rank, world_size)  # fail now, not at first batch
        self.modality = modality
        self.frames, self.height, self.width = frames, height, width
        self.fps = fps  # video only: resample clips to this rate (None: native rate)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.counter = counter if counter is not None else SkipCounter()
        self.batch_size = batch_size
        self.sample_counts = dict(sample_counts)
        self.caption_check = caption_check
        # ``decoder`` replaces media decoding (e.g. cached latents, training.cache), reading
        # ``open_shard(shard)`` for each shard of the plan: shard names, order, counts, shuffle
        # and positions stay those of data.shards, so the batches and resume are unchanged.
        self.decoder: Decoder = decoder if decoder is not None else self.media
        self.open_shard = open_shard
        self._epoch = 0
        self._position = 0
        self._yielded = 0
        #: Good samples yielded from repeat passes by this object; not saved.
        self.resampled = 0
        self.last_plan: Optional[EpochPlan] = None
        self._logged_epoch: Optional[int] = None
        self._logged_shape: Optional[str] = None  # the last epoch split logged at INFO
        self._plan(0)  # fail now (missing counts, share below one batch), not at first batch

    # -- resume ----------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """Where the stream is, as plain ints: ``{"epoch": e, "position": n, "yielded": g}``, n raw
        samples (good or bad, repeat passes included) of epoch e consumed, g good ones yielded."""
        return {"epoch": self._epoch, "position": self._position, "yielded": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()``; the skip counter is restored separately.

        A state without ``yielded`` (written by streams without balanced epochs) taken mid-epoch
        resumes as if nothing had been yielded yet in that epoch: the rank yields a full quota
        from that position, so all ranks stay in step, at the cost of seeing some samples of
        that epoch twice.
        """
        epoch, position, yielded = state.get("epoch"), state.get("position"), state.get("yielded", 0)
        if not all(isinstance(v, int) and v >= 0 for v in (epoch, position, yielded)) or yielded > position:
            raise ValueError(
                f"bad data stream state {state!r}: need non-negative ints 'epoch' and 'position' "
                f"and optionally 'yielded' (at most 'position')"
            )
        if "yielded" not in state and position > 0:
            log.warning("data stream state %s has no 'yielded' count (written without balanced "
                        "epochs): rank %d yields a full epoch quota from there", state, self.rank)
        self._epoch, self._position, self._yielded = epoch, position, yielded
        self._plan(epoch)

    # -- iteration -------------------------------------------------------------

    def _plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` (kept in ``last_plan``; pure, so recomputing it is safe)."""
        if self.last_plan is None or self.last_plan.epoch != epoch:
            self.last_plan = epoch_plan(self.shards, self.sample_counts, self.seed, epoch,
                                        self.world_size, self.batch_size)
        return self.last_plan

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Epochs of exactly ``samples_per_rank`` good samples each (see the module docstring)."""
        while True:
            plan = self._plan(self._epoch)
            if self.rank == 0 and self._logged_epoch != plan.epoch:  # every rank has the same plan
                # Once, and again only when the split changes: a line per epoch is noise on long runs.
                shape = plan.summary().split(":", 1)[-1]
                log.log(logging.INFO if shape != self._logged_shape else logging.DEBUG, "data %s", plan.summary())
                self._logged_epoch, self._logged_shape = plan.epoch, shape
            if self._yielded < plan.samples_per_rank:  # else: restored right after the epoch's last sample
                yield from self._rest_of_epoch(plan)
            self._epoch, self._position, self._yielded = plan.epoch + 1, 0, 0

    def _rest_of_epoch(self, plan: EpochPlan) -> Iterator[dict[str, Any]]:
        """The rest of ``plan.epoch`` from the current position: passes over the share until the quota."""
        start, quota = self._position, plan.samples_per_rank
        consumed = 0
        for repeat in itertools.count():
            pass_start, good = consumed, 0
            for raw in self._epoch_samples(plan):
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
                raise self._no_good_samples(plan, consumed - pass_start)

    def _epoch_samples(self, plan: EpochPlan) -> Iterator[dict[str, Any]]:
        """Raw samples of this rank's share of ``plan.epoch``, in shuffled order (not decoded)."""
        raw = (sample for shard in plan.shards[self.rank] for sample in self.open_shard(shard))
        rng = random.Random(_stream_seed(self.seed, plan.epoch, self.rank))
        return _shuffled(raw, self.shuffle_buffer, rng)

    def _decode(self, sample: dict[str, Any]) -> Optional[dict[str, Any]]:
        where = f"{sample.get('__url__', '?')}:{sample['__key__']}"
        first = self.counter.first_read(sample.get("__url__", "?"), sample.get("__index__"))
        try:
            out, kept = self.decoder(sample, where)
        except BadSample as exn:
            if first:
                self.counter.add_skip(exn.reason, where)
            return None
        if first:
            self.counter.add_ok()
            if kept is not None:
                self.counter.add_kept(kept, where)
        return out

    def _check_pass_length(self, plan: EpochPlan, length: int) -> None:
        """A pass must hold as many samples as counted; otherwise the plan (and resume) is off."""
        expected = plan.raw_samples[self.rank]
        if length != expected:
            raise DataError(
                f"rank {self.rank}'s shards in epoch {plan.epoch} ({listed(plan.shards[self.rank])}) hold "
                f"{length} samples, but the sample counts say {expected}: the shards changed after they "
                f"were counted. Count them again (delete the sample count cache if one is used) and "
                f"restart; a checkpoint taken with the old shards cannot be resumed exactly."
            )

    def _no_good_samples(self, plan: EpochPlan, consumed: int) -> DataError:
        return DataError(
            f"epoch {plan.epoch} produced no usable samples on rank {self.rank} from shards "
            f"{listed(plan.shards[self.rank])} ({consumed} raw samples; {self.counter.summary()}; "
            f"e.g. {self.counter.examples_text('; ')}). "
            f"Check that the shards hold {self.media.needs()}."
        )


# ----------------------------------------------------------------------------- batching


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into ``{"captions": [...], "keys": [...]}`` plus their tensors: ``pixels``
    (B, ...) for decoded media; ``posterior`` and ``cond`` (dicts of (B, ...) tensors) for cached ones."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: dict[str, Any] = {"captions": [s["caption"] for s in samples], "keys": [s["key"] for s in samples]}
    for name, value in samples[0].items():
        if torch.is_tensor(value):
            out[name] = torch.stack([s[name] for s in samples])
        elif isinstance(value, dict):
            out[name] = {k: torch.stack([s[name][k] for s in samples]) for k in value}
    return out


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
