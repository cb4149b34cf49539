"""Bad shards in a crawl: counted by reason and left out, within data.max_bad_fraction; one-line
errors when the data cannot carry the run; no tracebacks for empty inputs."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from training.config import ConfigError, load_config
from training.data.errors import BAD_SHARD_REASONS, DataError, ShardError, shard_error_reason
from training.data.index import scan_shards
from training.data.pipeline import ShardStream
from training.data.shards import list_shards
from training.errors import LorabenchError

from ...conftest import CONFIGS
from .conftest import SIZE, UNEVEN

W, H = SIZE
CONFIG = CONFIGS / "train" / "tiny-wan.yaml"


def make_bad_shards(good_tar, folder) -> dict[str, str]:
    """Write one shard per way a shard breaks; return ``{path: expected reason}``."""
    data = good_tar.read_bytes()
    with tarfile.open(good_tar) as tar:
        tar.getmembers()
        last_member_end = tar.offset
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}

    def put(name, content, reason):
        path = folder / name
        path.write_bytes(content)
        out[str(path)] = reason

    put("cut-in-member.tar", data[: 2048 + 100], "shard_truncated")
    put("cut-on-block.tar", data[:3072], "shard_truncated")
    put("cut-before-end.tar", data[:last_member_end], "shard_truncated")
    put("cut.tar.gz", gzip.compress(data)[: len(gzip.compress(data)) // 2], "shard_truncated")
    put("zero-bytes.tar", b"", "shard_empty")
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    put("no-members.tar", empty.getvalue(), "shard_empty")
    dirs = io.BytesIO()
    with tarfile.open(fileobj=dirs, mode="w") as tar:
        info = tarfile.TarInfo("only-a-dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    put("only-dirs.tar", dirs.getvalue(), "shard_empty")
    put("not-a-tar.tar", b"<html>404 not found</html>" * 40, "shard_unreadable")
    put("error-page.tar", b"<html>403 Forbidden</html>", "shard_unreadable")  # under one tar block
    # A readable first member, then a block of garbage where the next header should be.
    put("corrupt-header.tar", data[:last_member_end] + b"\x01" * 512 + bytes(1024), "shard_unreadable")
    dup = io.BytesIO()
    with tarfile.open(fileobj=dup, mode="w") as tar:
        for name in ("a.png", "a.PNG"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    put("duplicate-member.tar", dup.getvalue(), "shard_unreadable")
    return out


def test_bad_shards_are_counted_by_reason_and_left_out(uneven_image, tmp_path):
    bad = make_bad_shards(uneven_image[0], tmp_path / "bad")
    vanished = tmp_path / "bad" / "deleted-after-listing.tar"
    bad[str(vanished)] = "shard_missing"
    good = [str(p) for p in uneven_image]
    shards = [good[0], *bad, *good[1:]]
    scan = scan_shards(shards, cache=tmp_path / "counts.json")
    assert {b.shard: b.reason for b in scan.bad} == bad
    assert [b.shard for b in scan.bad] == list(bad)  # in list order
    assert scan.usable == good and scan.counts == dict(zip(good, UNEVEN))
    assert set(scan.by_reason()) <= set(BAD_SHARD_REASONS)
    for b in scan.bad:
        assert b.shard in b.message and "\n" not in b.message
    # Only good counts are cached: the bad shards are looked at again next time.
    again = scan_shards(shards, cache=tmp_path / "counts.json")
    assert again.counts == scan.counts and [b.reason for b in again.bad] == [b.reason for b in scan.bad]

    n = len(shards)
    scan.check(max_bad_fraction=len(bad) / n)  # at the threshold: fine
    with pytest.raises(DataError) as exc:
        scan.check(max_bad_fraction=0.05)
    msg = str(exc.value)
    assert "\n" not in msg and f"{len(bad)} of {n} shards" in msg and "data.max_bad_fraction=0.05" in msg
    assert f"{tmp_path / 'bad' / 'cut-in-member.tar'} (shard_truncated)" in msg and "and 7 more" in msg
    assert "shard_truncated=4" in msg and "remove" in msg
    with pytest.raises(DataError, match="fewer than the 9 data workers"):
        scan.check(max_bad_fraction=1.0, world_size=9)


def test_every_shard_bad_is_one_line(uneven_image, tmp_path):
    bad = make_bad_shards(uneven_image[0], tmp_path)
    scan = scan_shards(list(bad))
    assert scan.usable == []
    with pytest.raises(DataError) as exc:
        scan.check(max_bad_fraction=1.0)  # even a 100% allowance cannot train on nothing
    msg = str(exc.value)
    assert "\n" not in msg and f"none of the {len(bad)} shard(s) in data.shards" in msg
    assert "shard_truncated=4, shard_empty=3, shard_unreadable=4" in msg
    assert "cut-in-member.tar (shard_truncated)" in msg and "and 6 more" in msg and "re-create" in msg


def test_single_empty_tar_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    scan = scan_shards([str(empty)])
    with pytest.raises(DataError, match=r"none of the 1 shard\(s\).*shard_empty=1.*empty.tar \(shard_empty\)"):
        scan.check(0.05)
    # Given to the stream anyway (counts say 0), the epoch plan refuses it as a user error.
    with pytest.raises(LorabenchError, match="fewer than batch_size=1"):
        ShardStream([str(empty)], modality="image", frames=1, height=H, width=W, seed=0,
                    sample_counts={str(empty): 0})


def test_shard_errors_in_the_stream_carry_the_reason(uneven_image, tmp_path):
    bad = make_bad_shards(uneven_image[0], tmp_path)
    for path, reason in bad.items():
        if reason == "shard_empty" and not path.endswith("zero-bytes.tar"):
            continue  # a valid tar without samples: nothing fails while reading; the scan calls it out
        if path.endswith("corrupt-header.tar"):
            continue  # tarfile's stream mode ends quietly at a bad header; the scan's header walk sees it
        # Counted as one sample more than the good shard holds (the scan ran before the shard
        # broke): the stream reads it to the break, and fails there.
        stream = ShardStream([path], modality="image", frames=1, height=H, width=W, seed=0, shuffle_buffer=0,
                             sample_counts={path: UNEVEN[0] + 1})
        with pytest.raises(ShardError) as exc:
            list(zip(range(50), iter(stream)))
        assert exc.value.reason == reason and exc.value.shard == path and path in str(exc.value)


def test_os_errors_map_to_reasons():
    assert shard_error_reason(PermissionError(13, "Permission denied")) == "shard_permission_denied"
    assert shard_error_reason(FileNotFoundError(2, "No such file")) == "shard_missing"
    assert shard_error_reason(EOFError("Compressed file ended before the end-of-stream marker")) == "shard_truncated"
    assert shard_error_reason(tarfile.ReadError("invalid header")) == "shard_unreadable"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_shard(uneven_image, tmp_path):
    locked = tmp_path / "locked.tar"
    locked.write_bytes(uneven_image[0].read_bytes())
    locked.chmod(0)
    scan = scan_shards([str(locked), str(uneven_image[1])])
    assert [(b.shard, b.reason) for b in scan.bad] == [(str(locked), "shard_permission_denied")]


def test_empty_shard_specs_are_user_errors(tmp_path):
    for spec in ("data.shards=[]", "data.shards=''", "data.shards=[a.tar, ' ']"):
        with pytest.raises(ConfigError) as exc:
            load_config(CONFIG, ["model.path=/nowhere", spec])
        problem = [line for line in str(exc.value).splitlines() if "data.shards" in line]
        assert len(problem) == 1, str(exc.value)  # one line, naming the key
    with pytest.raises(LorabenchError, match="non-empty"):
        list_shards([])
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(LorabenchError, match="more than once"):
        list_shards([str(tmp_path / "a.tar")] * 2)
