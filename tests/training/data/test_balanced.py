"""Balanced epochs: every rank yields the plan's number of samples, resamples, resumes exactly."""

from __future__ import annotations

import itertools
import json
import logging

import pytest

from training.data.index import shard_sample_counts
from training.data.pipeline import DataError, ShardStream, batches
from training.data.shards import epoch_plan

from .conftest import FRAMES, SIZE, UNEVEN, take

W, H = SIZE


def _stream(shards, counts, rank=0, world_size=2, batch_size=2, modality="image", shuffle_buffer=4):
    return ShardStream([str(s) for s in shards], modality=modality, frames=FRAMES, height=H, width=W,
                       seed=0, shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size,
                       sample_counts=counts, batch_size=batch_size)


def _keys_per_epoch(stream, epochs: int) -> list[list[str]]:
    """Keys of the first ``epochs`` epochs, each sample filed under the stream's epoch after it."""
    out: list[list[str]] = [[] for _ in range(epochs)]
    for sample in iter(stream):
        epoch = stream.state_dict()["epoch"]
        if epoch == epochs:
            return out
        out[epoch].append(sample["key"])
    raise AssertionError("the stream ended")


def test_ranks_yield_the_planned_count_every_epoch(uneven_image):
    shards = [str(p) for p in uneven_image]
    counts = shard_sample_counts(shards)
    assert list(counts.values()) == list(UNEVEN)
    plans = [epoch_plan(shards, counts, 0, e, world_size=2, batch_size=2) for e in range(3)]
    assert any(d > 0 for p in plans for d in p.dropped)  # uneven shares: someone drops samples
    streams = [_stream(shards, counts, rank=r) for r in range(2)]
    keys = [_keys_per_epoch(s, 3) for s in streams]
    for e, plan in enumerate(plans):
        assert len(keys[0][e]) == len(keys[1][e]) == plan.samples_per_rank
        assert not set(keys[0][e]) & set(keys[1][e])
        for r in range(2):
            assert len(set(keys[r][e])) == plan.samples_per_rank  # no sample twice: nothing was bad
            own = {p.rsplit("-", 1)[1][:6] for p in plan.shards[r]}  # keys start with the shard number
            assert {k[:6] for k in keys[r][e]} <= own
    assert streams[0].last_plan == epoch_plan(shards, counts, 0, 3, world_size=2, batch_size=2)
    assert streams[0].resampled == streams[1].resampled == 0
    # Whole batches only, so a batch never straddles two epochs.
    stream = _stream(shards, counts)
    for batch in itertools.islice(batches(iter(stream), 2), plans[0].samples_per_rank // 2):
        assert stream.state_dict()["epoch"] == 0 and len(batch["keys"]) == 2


def test_plan_errors_surface_at_construction(uneven_image):
    shards = [str(p) for p in uneven_image]
    counts = dict(zip(shards, UNEVEN))
    with pytest.raises(ValueError, match="at least one shard"):
        _stream(shards[:1], counts)
    with pytest.raises(ValueError, match=r"epoch 0 .* rank \d of 2 .*batch_size=11.*smaller batch size"):
        _stream(shards, counts, batch_size=11)  # 21 samples over 2 ranks: the smaller share has <= 10
    with pytest.raises(ValueError, match="no sample count"):
        _stream(shards, {shards[0]: 7})
    with pytest.raises(ValueError, match="batch_size"):
        _stream(shards, counts, batch_size=0)


@pytest.fixture(scope="module")
def bad_and_seven(bad_image, uneven_image):
    """[bad shard (6 samples, 2 good), 7-sample shard]: with seed 0, rank 0 gets the bad one in
    epoch 0 and rank 1 in epochs 1 and 2; every epoch's quota is 6 (batch 2)."""
    shards = [str(bad_image[0]), str(uneven_image[0])]
    return shards, shard_sample_counts(shards)


def test_short_share_is_read_again(bad_and_seven, bad_image):
    shards, counts = bad_and_seven
    assert counts == {shards[0]: 6, shards[1]: 7}
    plan = epoch_plan(shards, counts, 0, 0, world_size=2, batch_size=2)
    assert plan.shards == ((shards[0],), (shards[1],)) and plan.samples_per_rank == 6

    # In tar order (no shuffle) the bad shard's 2 good samples come first, then 4 bad ones.
    short, full = _stream(shards, counts, rank=0, shuffle_buffer=0), _stream(shards, counts, rank=1)
    keys = [s["key"] for s in take(short, 6)]
    assert keys == ["good_000", "good_001"] * 3
    assert short.resampled == 4
    # Two full passes and a third begun, yet each bad sample is counted once (problem: twice),
    # and so is each good one: 6 distinct samples, 4 of them bad.
    assert short.counter.skips == {reason: 1 for reason in bad_image[1]}
    assert short.counter.seen == 6 and short.counter.fraction() == 4 / 6
    assert {r: len(k) for r, k in short.counter.examples.items()} == {r: 1 for r in bad_image[1]}
    assert short.state_dict() == {"epoch": 0, "position": 6 + 6 + 2, "yielded": 6}
    shuffled = [s["key"] for s in take(_stream(shards, counts, rank=0), 6)]
    assert shuffled[:2] == shuffled[2:4] == shuffled[4:]  # every pass in the same order

    keys = [s["key"] for s in take(full, 6)]
    assert len(set(keys)) == 6 and full.resampled == 0
    assert full.state_dict() == {"epoch": 0, "position": 6, "yielded": 6}  # 1 sample dropped
    assert take(full, 1) and full.state_dict()["epoch"] == 1


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_is_exact_from_every_cut(bad_and_seven, rank):
    shards, counts = bad_and_seven
    n = 18  # three epochs of 6
    uninterrupted = _stream(shards, counts, rank=rank)
    reference, states = [], []
    for sample in itertools.islice(iter(uninterrupted), n):
        reference.append(sample["key"])
        states.append(uninterrupted.state_dict())
    assert uninterrupted.resampled > 0
    raw = {e: epoch_plan(shards, counts, 0, e, 2, 2).raw_samples[rank] for e in range(3)}
    assert any(s["position"] > raw[s["epoch"]] and s["yielded"] < 6 for s in states)  # mid repeat pass
    assert any(s["yielded"] == 6 for s in states)  # right at an epoch's end

    for k in range(n):
        first = _stream(shards, counts, rank=rank)
        head = [s["key"] for s in take(first, k)]
        state = json.loads(json.dumps(first.state_dict()))
        assert set(state) == {"epoch", "position", "yielded"}
        resumed = _stream(shards, counts, rank=rank)
        resumed.load_state_dict(state)
        assert head + [s["key"] for s in take(resumed, n - k)] == reference, f"cut after {k}"
        # Samples before the cut were dropped undecoded: the fresh counter never saw them.
        fresh_seen = resumed.counter.seen
        assert fresh_seen <= uninterrupted.counter.seen
        # Restoring the counter with the position (as the trainer does) counts exactly as the
        # uninterrupted run: once per sample, re-reads after the cut included.
        again = _stream(shards, counts, rank=rank)
        again.load_state_dict(state)
        again.counter.load_state_dict(json.loads(json.dumps(first.counter.state_dict())))
        take(again, n - k)
        assert again.counter.state_dict() == uninterrupted.counter.state_dict(), f"cut after {k}"


def test_state_without_yielded(uneven_image, caplog):
    shards = [str(p) for p in uneven_image]
    counts = dict(zip(shards, UNEVEN))
    quota = epoch_plan(shards, counts, 0, 1, 2, 2).samples_per_rank
    new, old = _stream(shards, counts), _stream(shards, counts)
    new.load_state_dict({"epoch": 1, "position": 0, "yielded": 0})
    old.load_state_dict({"epoch": 1, "position": 0})
    assert [s["key"] for s in take(new, 5)] == [s["key"] for s in take(old, 5)]

    mid = _stream(shards, counts)
    with caplog.at_level(logging.WARNING, logger="lorabench.data"):
        mid.load_state_dict({"epoch": 1, "position": 2})
    assert "no 'yielded' count" in caplog.text
    take(mid, quota)  # a full quota from there, reading the share again if needed
    assert mid.state_dict()["epoch"] == 1 and mid.state_dict()["yielded"] == quota
    with pytest.raises(ValueError, match="yielded"):
        mid.load_state_dict({"epoch": 0, "position": 1, "yielded": 2})


def test_plan_is_logged_once_per_epoch_by_rank_zero(uneven_image, caplog):
    shards = [str(p) for p in uneven_image]
    counts = dict(zip(shards, UNEVEN))
    with caplog.at_level(logging.DEBUG, logger="lorabench.data"):
        for rank in range(2):
            stream = _stream(shards, counts, rank=rank)
            _keys_per_epoch(stream, 2)
            stream.load_state_dict(stream.state_dict())  # a new iterator in the same epoch
            take(stream, 1)
    records = [r for r in caplog.records if r.name == "lorabench.data" and r.getMessage().startswith("data epoch")]
    lines = [r.getMessage() for r in records]
    assert [line.split(":")[0] for line in lines] == ["data epoch 0", "data epoch 1", "data epoch 2"]
    plan = epoch_plan(shards, counts, 0, 0, 2, 2)
    assert lines[0] == "data " + plan.summary() and str(list(plan.dropped)) in lines[0]
    # INFO for the first epoch and whenever the split changes; an unchanged split is DEBUG.
    shapes = [line.split(":", 1)[1] for line in lines]
    expected = [logging.INFO] + [logging.INFO if shapes[i] != shapes[i - 1] else logging.DEBUG for i in (1, 2)]
    assert [r.levelno for r in records] == expected


def test_share_without_good_samples_fails(small_image):
    # Image shards read as video: every sample lacks an mp4 member.
    shards = [str(p) for p in small_image]
    stream = _stream(shards, shard_sample_counts(shards), world_size=1, modality="video")
    with pytest.raises(DataError, match="no usable samples.*missing_media=8") as exc:
        take(stream, 1)
    assert shards[0] in str(exc.value)


def test_stale_counts_are_reported(uneven_image):
    shard = str(uneven_image[0])
    stream = _stream([shard], {shard: 9}, world_size=1, batch_size=1)
    with pytest.raises(DataError, match=f"{shard}.*hold 7 samples, but the sample counts say 9"):
        take(stream, 9)
