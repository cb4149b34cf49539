"""Synthetic shards: deterministic bytes, standard tar layout, CLI."""

from __future__ import annotations

import tarfile

import pytest

from training.data.synthetic import COLOURS, MOTIONS, SHAPES, main, make_data


@pytest.mark.parametrize("kind", ["video", "image"])
def test_same_seed_gives_identical_bytes(tmp_path, kind):
    a = make_data(kind, tmp_path / "a", shards=2, samples_per_shard=3, seed=7, size=(32, 32), frames=5)
    b = make_data(kind, tmp_path / "b", shards=2, samples_per_shard=3, seed=7, size=(32, 32), frames=5)
    c = make_data(kind, tmp_path / "c", shards=2, samples_per_shard=3, seed=8, size=(32, 32), frames=5)
    assert [p.name for p in a] == ["shard-000000.tar", "shard-000001.tar"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_tar_layout_and_captions(small_video):
    with tarfile.open(small_video[1]) as tar:
        names = tar.getnames()
        captions = [tar.extractfile(n).read().decode() for n in names if n.endswith(".txt")]
    assert names[:2] == ["000001_000000.mp4", "000001_000000.txt"]
    assert len(names) == 8
    for caption in captions:
        words = caption.split(" ", 3)  # "a red circle moving left"
        assert words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES and words[3] in MOTIONS


def test_odd_video_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="33x32"):
        make_data("video", tmp_path, shards=1, samples_per_shard=1, size=(33, 32), frames=3)


def test_refuses_to_write_next_to_other_shards(tmp_path):
    (tmp_path / "old.tar").write_bytes(b"")
    with pytest.raises(FileExistsError, match="old.tar"):
        make_data("image", tmp_path, shards=1, samples_per_shard=1, size=(16, 16))


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--kind", "image", "--out", str(out), "--shards", "2", "--samples-per-shard", "2",
                 "--size", "16x24"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "shard-000001.tar") in printed and "wrote 2 shard(s), 4 samples" in printed


@pytest.mark.parametrize("size, message", [("64", "WIDTHxHEIGHT"), ("axb", "WIDTHxHEIGHT"), ("33x32", "even")])
def test_cli_bad_size(tmp_path, capsys, size, message):
    with pytest.raises(SystemExit) as exc:
        main(["--kind", "video", "--out", str(tmp_path), "--shards", "1", "--samples-per-shard", "1",
              "--size", size, "--frames", "3"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
