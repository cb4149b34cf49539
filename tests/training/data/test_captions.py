"""data.long_captions: captions over the text encoder's token limit are truncated (counted),
skipped (counted) or refused, never trained on silently cut."""

from __future__ import annotations

import itertools
import random

import pytest

from training.config import ConfigError, load_config
from training.data.captions import CaptionLengthCheck, long_caption_action, over_limit
from training.data.errors import DataError
from training.data.pipeline import ShardStream
from training.data.synthetic import render_image
from training.media_io import encode_png
from training.models.tiny_text import clip_tokenizer, t5_tokenizer

from ...conftest import CONFIGS
from .conftest import LONG_CAPTION as LONG
from .conftest import SIZE, write_tar

W, H = SIZE
CONFIG = CONFIGS / "train" / "tiny-wan.yaml"


def test_long_caption_action_is_a_pure_policy():
    sd3 = {"tokenizer": 77, "tokenizer_2": 77, "tokenizer_3": 256}
    fits = {"tokenizer": 77, "tokenizer_2": 77, "tokenizer_3": 256}
    clip_over = {"tokenizer": 78, "tokenizer_2": 78, "tokenizer_3": 90}
    for policy in ("truncate", "skip", "error"):
        assert long_caption_action(fits, sd3, policy) == "keep"  # at the limit: fits
        assert long_caption_action(clip_over, sd3, policy) == policy
    assert over_limit(clip_over, sd3) == {"tokenizer": (78, 77), "tokenizer_2": (78, 77)}
    with pytest.raises(ValueError, match="tokenizer_3"):
        long_caption_action({"tokenizer": 3}, sd3, "skip")
    with pytest.raises(ValueError, match="truncate, skip, error"):
        long_caption_action(fits, sd3, "drop")


def test_check_counts_real_tokens():
    t5, clip = t5_tokenizer(), clip_tokenizer()
    check = CaptionLengthCheck({"tokenizer": clip, "tokenizer_3": t5}, {"tokenizer": 8, "tokenizer_3": 16}, "skip")
    assert check("a red square") == ("keep", {})
    caption = "a red square moving left and a blue circle"
    n_clip = len(clip(caption)["input_ids"])
    assert n_clip > 8 and len(t5(caption)["input_ids"]) <= 16
    assert check(caption) == ("skip", {"tokenizer": (n_clip, 8)})
    # A runaway caption is judged on its beginning (64 characters per allowed token).
    huge = "a red square " * 100_000
    action, over = check(huge)
    assert action == "skip" and 16 < over["tokenizer_3"][0] < 64 * 16


def _shard(path, captions: dict[str, str]) -> None:
    members = []
    for i, (key, caption) in enumerate(captions.items()):
        members += [(f"{key}.png", encode_png(render_image(random.Random(i), W, H)[1])),
                    (f"{key}.txt", caption.encode())]
    write_tar(path, members)


def _stream(path, policy: str) -> ShardStream:
    check = CaptionLengthCheck({"tokenizer": t5_tokenizer()}, {"tokenizer": 512}, policy)
    return ShardStream([str(path)], modality="image", frames=1, height=H, width=W, seed=0, shuffle_buffer=0,
                       sample_counts={str(path): 4}, caption_check=check)


@pytest.fixture(scope="module")
def long_caption_shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "long.tar"
    _shard(path, {"a": "a red square", "long": LONG, "b": "a blue circle", "c": "a green triangle"})
    return path


def test_truncate_trains_and_counts(long_caption_shard):
    stream = _stream(long_caption_shard, "truncate")
    out = list(itertools.islice(iter(stream), 12))  # three epochs
    assert [s["key"] for s in out] == ["a", "long", "b", "c"] * 3
    assert out[1]["caption"] == LONG  # the text encoder keeps its first 512 tokens, as at inference
    c = stream.counter
    assert c.kept == {"caption_truncated": 1} and c.skips == {} and c.seen == 4  # once, not three times
    assert c.kept_examples == {"caption_truncated": [f"{long_caption_shard}:long"]}
    assert c.summary() == "skipped 0 of 4 distinct samples read (0.0%); used 1 with changes: caption_truncated=1"
    assert c.report()["kept_by_reason"] == {"caption_truncated": 1}


def test_skip_counts_a_skip(long_caption_shard):
    stream = _stream(long_caption_shard, "skip")
    # 4 samples per epoch: a pass yields 3, so each epoch's quota ends with "a" of a second pass.
    assert [s["key"] for s in itertools.islice(iter(stream), 8)] == ["a", "b", "c", "a"] * 2
    assert stream.counter.skips == {"caption_too_long": 1} and stream.counter.kept == {}
    assert stream.counter.examples == {"caption_too_long": [f"{long_caption_shard}:long"]}


def test_error_names_the_sample(long_caption_shard):
    with pytest.raises(DataError) as exc:
        list(itertools.islice(iter(_stream(long_caption_shard, "error")), 4))
    msg = str(exc.value)
    assert "\n" not in msg and f"{long_caption_shard}:long" in msg and "(limit 512)" in msg
    assert "data.long_captions=error" in msg and "data.long_captions=truncate" in msg


def test_config_field():
    cfg = load_config(CONFIG, ["model.path=/nowhere", "data.shards=x.tar"])
    assert cfg.data.long_captions == "truncate"
    assert load_config(CONFIG, ["model.path=/nowhere", "data.shards=x.tar",
                                "data.long_captions=skip"]).data.long_captions == "skip"
    with pytest.raises(ConfigError, match="data.long_captions"):
        load_config(CONFIG, ["model.path=/nowhere", "data.shards=x.tar", "data.long_captions=drop"])
