"""The input stream: skip accounting, exact resume, worker split, loud failures."""

from __future__ import annotations

import json

import pytest
import torch

from training.data.pipeline import DataError, ShardStream, SkipCounter, batches, collate
from training.data.synthetic import GOOD_IN_BAD_SHARD

from .conftest import FRAMES, SIZE, counted, take

W, H = SIZE


def _stream(shards, modality="video", **kw) -> ShardStream:
    """One rank, batch size 1: every epoch yields as many good samples as the shards hold samples."""
    kw.setdefault("seed", 0)
    kw.setdefault("shuffle_buffer", 4)
    if "sample_counts" not in kw:
        kw["sample_counts"] = counted(shards)
    return ShardStream([str(s) for s in shards], modality=modality, frames=FRAMES, height=H, width=W, **kw)


@pytest.mark.parametrize("kind", ["video", "image"])
def test_bad_shard_reasons_are_counted(kind, bad_video, bad_image):
    path, expected = bad_video if kind == "video" else bad_image
    stream = _stream([path], modality=kind, shuffle_buffer=0)  # tar order: the good ones come first
    good = take(stream, GOOD_IN_BAD_SHARD)
    assert sorted(s["key"] for s in good) == ["good_000", "good_001"]
    assert all(s["caption"].startswith("a ") for s in good)
    assert good[0]["pixels"].shape == ((3, FRAMES, H, W) if kind == "video" else (3, H, W))
    # Pulling one more sample reads the rest of the pass (all bad) and the first of a repeat
    # pass (the epoch's quota is one per sample in the shard), which was counted in the first
    # pass already: counts are per sample, not per read.
    assert take(stream, 1)[0]["key"] == "good_000"
    assert stream.counter.skips == expected
    assert stream.counter.seen == GOOD_IN_BAD_SHARD + sum(expected.values())
    take(stream, 2 * (GOOD_IN_BAD_SHARD + 1))  # more passes, into the next epoch: nothing new to count
    assert stream.counter.skips == expected
    assert stream.counter.seen == GOOD_IN_BAD_SHARD + sum(expected.values())
    examples = stream.counter.examples
    assert examples["empty_caption"] == [f"{path}:empty_caption"]


def test_skip_counter_check_thresholds():
    c = SkipCounter()
    for i in range(18):
        c.add_ok()
    c.add_skip("too_small", "s.tar:k1")
    c.add_skip("empty_caption", "s.tar:k2")
    assert c.summary() == "skipped 2 of 20 distinct samples read (10.0%): too_small=1, empty_caption=1"
    c.check(0.1)  # at the threshold: fine
    c.check(0.5)
    with pytest.raises(DataError) as exc:
        c.check(0.05)
    msg = str(exc.value)
    assert "too_small=1, empty_caption=1" in msg and "s.tar:k1" in msg and "s.tar:k2" in msg
    assert "max_bad_fraction" in msg


def test_skip_counter_min_seen_and_final():
    c = SkipCounter()
    c.add_ok()
    c.add_skip("undecodable_media", "x.tar:a")
    c.check(0.05)  # only 2 seen: too early to judge
    with pytest.raises(DataError, match="undecodable_media=1"):
        c.check(0.05, final=True)
    SkipCounter().check(0.0, final=True)  # nothing seen: nothing to judge


def test_skip_counter_state_round_trip():
    c = SkipCounter()
    c.add_ok()
    for k in "abcde":
        c.add_skip("too_small", k)
    state = json.loads(json.dumps(c.state_dict()))
    d = SkipCounter()
    d.load_state_dict(state)
    assert d.summary() == c.summary() and d.examples == {"too_small": ["a", "b", "c"]}


def _same(a, b):
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert [s["caption"] for s in a] == [s["caption"] for s in b]
    for x, y in zip(a, b):
        assert torch.equal(x["pixels"], y["pixels"])


@pytest.mark.parametrize("k", [3, 12, 17])
def test_resume_is_exact_across_epoch_boundaries(small_video, bad_video, k):
    # 8 good + 2 good / 5 bad samples: an epoch's quota of 15 is a pass (10 good) and the first
    # 5 good ones of a repeat pass; 32 samples span 3 epochs. Cuts: in the first pass, in the
    # repeat pass, in the next epoch.
    shards = [*small_video, bad_video[0]]
    uninterrupted = _stream(shards)
    reference = take(uninterrupted, 32)
    keys = [s["key"] for s in reference]
    assert len(set(keys[:10])) == 10  # one pass: every good sample once
    assert keys[10:15] == keys[:5]  # the repeat pass reads in the same order
    assert keys[:15] != keys[15:30]  # the next epoch is reshuffled

    first = _stream(shards)
    head = take(first, k)
    state = json.loads(json.dumps(first.state_dict()))
    assert set(state) == {"epoch", "position", "yielded"}

    resumed = _stream(shards)
    resumed.load_state_dict(state)
    resumed.counter.load_state_dict(json.loads(json.dumps(first.counter.state_dict())))
    tail = take(resumed, 32 - k)
    _same(head + tail, reference)
    # With the counter restored too, counts match the uninterrupted run's: each sample once.
    assert resumed.counter.state_dict() == uninterrupted.counter.state_dict()
    assert uninterrupted.counter.seen == 8 + 7  # distinct samples, though 5 passes were read


def test_resume_discards_without_decoding(small_video):
    stream = _stream(small_video)
    take(stream, 5)
    assert stream.counter.seen == 5
    resumed = _stream(small_video)
    resumed.load_state_dict(stream.state_dict())
    take(resumed, 2)
    assert resumed.counter.seen == 2  # the first 5 raw samples were skipped, not decoded


def test_ranks_split_each_epoch(small_video):
    shards = [*small_video]
    keys = [{s["key"] for s in take(_stream(shards, rank=r, world_size=2), 4)} for r in range(2)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 8
    with pytest.raises(ValueError, match="at least one shard"):
        _stream(shards[:1], rank=0, world_size=2)


def test_truncated_tar_names_the_shard(small_image, tmp_path):
    data = small_image[1].read_bytes()
    # Cut inside a member, and exactly on a 512-byte block boundary (which tarfile alone
    # would take for a normal end of archive).
    for i, cut in enumerate((2048 + 100, 2560 + 50, 3072)):
        broken = tmp_path / f"broken{i}.tar"
        broken.write_bytes(data[:cut])
        # Counted before the copy was cut: the stream meets the cut while reading.
        stream = _stream([broken], modality="image", shuffle_buffer=0, sample_counts={str(broken): 4})
        with pytest.raises(DataError, match=str(broken)):
            take(stream, 10)


def test_pipe_shards(small_image):
    direct = take(_stream(small_image, modality="image"), 8)
    piped = take(_stream([f"pipe:cat {p}" for p in small_image], modality="image"), 8)
    assert [s["key"] for s in direct] == [s["key"] for s in piped]


def test_batches_and_collate(small_image):
    stream = _stream(small_image, modality="image")
    batch = next(batches(iter(stream), 3))
    assert batch["pixels"].shape == (3, 3, H, W) and len(batch["captions"]) == len(batch["keys"]) == 3
    assert stream.state_dict() == {"epoch": 0, "position": 3, "yielded": 3}  # lazily pulled: exactly one batch
    samples = take(_stream(small_image, modality="image"), 5)
    assert [b["keys"] for b in batches(samples, 2)] == [[s["key"] for s in samples[:2]],
                                                         [s["key"] for s in samples[2:4]]]
    assert len(list(batches(samples, 2, drop_last=False))) == 3
    with pytest.raises(ValueError):
        collate([])


def test_skip_counter_counts_each_sample_once_across_state_round_trips():
    c = SkipCounter()
    for index in range(100_000):  # a crawl-sized shard, read once
        assert c.first_read("big.tar", index)
        c.add_ok()
    assert c.first_read("bad.tar", 3)
    c.add_skip("undecodable_media", "bad.tar:k3")
    state = json.loads(json.dumps(c.state_dict()))
    assert len(json.dumps(state["read"])) < 2_000  # one bit per sample, compressed
    d = SkipCounter()
    d.load_state_dict(state)
    # Re-reads after a resume are not counted again; new samples are.
    assert not d.first_read("big.tar", 99_999) and not d.first_read("bad.tar", 3)
    assert d.first_read("big.tar", 100_000) and d.first_read("bad.tar", 4)
    assert d.seen == 100_001 and d.skips == {"undecodable_media": 1}
    old = {k: state[k] for k in ("seen", "skips", "examples")}  # a state written before the bits existed
    e = SkipCounter()
    e.load_state_dict(old)
    assert e.seen == 100_001 and e.first_read("big.tar", 0)
