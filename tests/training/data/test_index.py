"""Sample counts per shard: webdataset's grouping, loud failures, the JSON cache."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
from webdataset import tariterators

from training.data.index import count_samples, shard_sample_counts
from training.data.pipeline import DataError

from .conftest import UNEVEN


def _webdataset_count(shard) -> int:
    """What webdataset itself yields for the shard (the ground truth for the counts)."""
    return sum(1 for _ in tariterators.tarfile_samples([{"url": str(shard)}]))


def _write_tar(path, names, directories=()) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for d in directories:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


def test_counts_match_webdataset(uneven_image):
    for path, n in zip(uneven_image, UNEVEN):
        assert count_samples(str(path)) == _webdataset_count(path) == n
        assert count_samples(f"pipe:cat {path}") == n


def test_grouping_edge_cases_match_webdataset(tmp_path):
    # Metadata members, names without an extension, multi-dot names, sub-directories,
    # upper-case extensions and a key that reappears after another one.
    names = ["__meta__", "__index__/x.json", "README", "a.jpg", "a.TXT", "a.seg.png", "b.jpg",
             "dir/c.d.jpg", "dir/c.d.txt", "dir.x/e.jpg", "a.cls", "f.jpg"]
    path = tmp_path / "edge.tar"
    _write_tar(path, names, directories=["dir"])
    expected = _webdataset_count(path)
    assert expected == 6  # a, b, dir/c, dir.x/e, a (again), f
    assert count_samples(str(path)) == count_samples(f"pipe:cat {path}") == expected


def test_duplicate_member_fails_like_webdataset(tmp_path):
    path = tmp_path / "dup.tar"
    _write_tar(path, ["a.jpg", "a.JPG"])
    with pytest.raises(ValueError, match="duplicate"):
        _webdataset_count(path)
    with pytest.raises(DataError, match=f"{path}.*a.JPG"):
        count_samples(str(path))


def test_unreadable_shards_are_named(uneven_image, tmp_path):
    data = uneven_image[0].read_bytes()
    not_tar = tmp_path / "not-a-tar.tar"
    not_tar.write_bytes(b"hello" * 300)
    cases = [tmp_path / "missing.tar", not_tar]
    with tarfile.open(uneven_image[0]) as tar:
        tar.getmembers()
        last_member_end = tar.offset
    # Cut inside a member, on a block boundary, and right before the end-of-archive blocks.
    for i, cut in enumerate((2048 + 100, 3072, last_member_end)):
        cases.append(tmp_path / f"cut{i}.tar")
        cases[-1].write_bytes(data[:cut])
    for path in cases:
        with pytest.raises(DataError, match=f"shard {path}.*re-create it or remove it"):
            count_samples(str(path))
    with pytest.raises(DataError, match="pipe:cat /nonexistent"):
        count_samples("pipe:cat /nonexistent/shard.tar")


def _cache_entries(cache):
    return json.loads(cache.read_text())["shards"]


def test_cache_is_reused_while_files_are_unchanged(uneven_image, tmp_path):
    shards = [str(p) for p in uneven_image[:2]] + [f"pipe:cat {uneven_image[2]}"]
    cache = tmp_path / "cache" / "counts.json"
    assert shard_sample_counts(shards, cache) == dict(zip(shards, UNEVEN))
    entries = _cache_entries(cache)
    assert entries[shards[0]]["size"] == uneven_image[0].stat().st_size
    assert entries[shards[0]]["realpath"] == os.path.realpath(shards[0])
    assert entries[shards[2]] == {"samples": UNEVEN[2]}  # remote: keyed by the URL only

    # Plant wrong counts: coming back proves the files were not read again.
    for shard in shards:
        entries[shard]["samples"] = 99
    cache.write_text(json.dumps({"version": 1, "shards": entries}))
    mtime = cache.stat().st_mtime_ns
    assert shard_sample_counts(shards, cache) == dict.fromkeys(shards, 99)
    assert cache.stat().st_mtime_ns == mtime  # nothing counted, nothing rewritten


def test_cache_recounts_changed_files(uneven_image, tmp_path):
    shard = tmp_path / "shard.tar"
    shard.write_bytes(uneven_image[0].read_bytes())
    other = str(tmp_path / "elsewhere.tar")
    cache = tmp_path / "counts.json"
    cache.write_text(json.dumps({"version": 1, "shards": {other: {"samples": 5}}}))
    assert shard_sample_counts([str(shard)], cache) == {str(shard): UNEVEN[0]}

    shard.write_bytes(uneven_image[3].read_bytes())  # rewritten: new size and mtime
    assert shard_sample_counts([str(shard)], cache) == {str(shard): UNEVEN[3]}
    entries = _cache_entries(cache)
    assert entries[str(shard)]["samples"] == UNEVEN[3]
    assert entries[other] == {"samples": 5}  # other data sets' entries are kept

    entries[str(shard)]["samples"] = 99
    cache.write_text(json.dumps({"version": 1, "shards": entries}))
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, touched
    assert shard_sample_counts([str(shard)], cache) == {str(shard): UNEVEN[3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.json", "shard.tar"]  # no temp files


def test_broken_cache_is_ignored_and_replaced(uneven_image, tmp_path, caplog):
    cache = tmp_path / "counts.json"
    cache.write_text("{not json")
    shards = [str(uneven_image[1])]
    assert shard_sample_counts(shards, cache) == {shards[0]: UNEVEN[1]}
    assert "ignoring sample count cache" in caplog.text
    assert _cache_entries(cache)[shards[0]]["samples"] == UNEVEN[1]
    assert shard_sample_counts(shards) == {shards[0]: UNEVEN[1]}  # no cache at all
