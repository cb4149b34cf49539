"""A training run over crawl-like data: bad shards, bad samples and a 100k-character caption are
counted per reason in metrics.jsonl, result.json and the summary line, and training goes on."""

from __future__ import annotations

import json
import random
import tarfile

import pytest

from training.data.errors import DataError
from training.data.synthetic import make_bad_shard, make_data, render_video
from training.media_io import encode_mp4
from training.trainer import Trainer

from ...conftest import tiny_config
from .conftest import LONG_CAPTION as LONG
from .conftest import write_tar

FRAMES = 9  # tiny-wan.yaml: 32x32, 9 frames, max_text_length 32


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> tuple[list[str], dict[str, int]]:
    """2 good shards, one with bad samples, one with a 100k-character caption, and 3 broken shards."""
    root = tmp_path_factory.mktemp("crawl")
    good = make_data("video", root / "good", shards=2, samples_per_shard=2, seed=0, size=(32, 32), frames=FRAMES)
    bad_shard = root / "mixed" / "bad-samples.tar"
    bad_samples = make_bad_shard(bad_shard, (32, 32), FRAMES, kind="video")
    clips = [encode_mp4(render_video(random.Random(i), 32, 32, FRAMES)[1], 8) for i in range(2)]
    long_caption = root / "mixed" / "long-caption.tar"
    write_tar(long_caption, [("short.mp4", clips[0]), ("short.txt", b"a red square"),
                             ("long.mp4", clips[1]), ("long.txt", LONG.encode())])
    truncated = root / "broken" / "truncated.tar"
    truncated.parent.mkdir()
    truncated.write_bytes(good[0].read_bytes()[:3000])
    empty = root / "broken" / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    (root / "broken" / "html.tar").write_bytes(b"<html>403 Forbidden</html>")
    shards = [*map(str, good), str(bad_shard), str(long_caption),
              str(truncated), str(empty), str(root / "broken" / "html.tar")]
    return shards, bad_samples


def test_run_counts_everything_per_reason(tiny_wan, crawl, tmp_path):
    shards, bad_samples = crawl
    # 4 usable shards, 3 bad ones (42.9%): within a 0.5 allowance; 13 raw samples per epoch.
    cfg = tiny_config("wan", tiny_wan, shards[0], tmp_path, "train.max_steps=14", "train.batch_size=1",
                      "checkpoint.every_steps=1000", "log.tensorboard=false", "data.shuffle_buffer=0",
                      "data.max_bad_fraction=0.5")
    cfg.data.shards = shards
    result = Trainer(cfg).run()
    assert result.steps == 14  # training went on past every kind of breakage

    expected = {
        "skips_by_reason": bad_samples,
        "kept_by_reason": {"caption_truncated": 1},
        "bad_shards_by_reason": {"shard_truncated": 1, "shard_empty": 1, "shard_unreadable": 1},
        "bad_shards": 3,
        "skipped_samples": sum(bad_samples.values()),
        "seen_samples": 4 + 7 + 2,  # each sample once, though 14 steps read some twice
    }
    body = json.loads((result.run_dir / "result.json").read_text())
    assert {k: body[k] for k in expected} == expected
    assert sorted(sum(body["bad_shard_examples"].values(), [])) == sorted(shards[-3:])
    assert body["kept_examples"] == {"caption_truncated": [f"{shards[3]}:long"]}
    last = json.loads((result.run_dir / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 14 and {k: last[k] for k in expected} == expected
    # The summary line printed at the end lists every reason.
    for reason in [*bad_samples, "caption_truncated", "shard_truncated", "shard_empty", "shard_unreadable"]:
        assert f"{reason}=1" in result.skipped
    assert "left out 3 of 7 shards" in result.skipped and "\n" not in result.skipped
    assert body["skipped"] == result.skipped


def test_too_many_bad_shards_is_one_line(tiny_wan, crawl, tmp_path):
    shards, _ = crawl
    cfg = tiny_config("wan", tiny_wan, shards[0], tmp_path, "train.max_steps=1", "log.tensorboard=false")
    cfg.data.shards = shards  # 3 of 7 shards bad, data.max_bad_fraction 0.05
    with pytest.raises(DataError) as exc:
        Trainer(cfg).run()
    msg = str(exc.value)
    assert "\n" not in msg and "3 of 7 shards in data.shards are unusable" in msg
    assert "truncated.tar (shard_truncated)" in msg and "raise data.max_bad_fraction" in msg
