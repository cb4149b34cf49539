"""A corpus of broken inputs, one per way a crawl breaks: every one is counted under its exact
reason, once, the good samples keep flowing, and nothing is written anywhere."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random
import uuid

import av
import numpy as np
import pytest
from PIL import Image

from training.data.index import scan_shards
from training.data.pipeline import ShardStream
from training.data.synthetic import render_image, render_video
from training.media_io import encode_mp4, encode_png

from .conftest import FRAMES, SIZE, write_tar

W, H = SIZE


def _png(seed: int) -> bytes:
    return encode_png(render_image(random.Random(seed), W, H)[1])


def _jpg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(render_image(random.Random(seed), W, H)[1]).save(buf, format="JPEG")
    return buf.getvalue()


def _gif(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(render_image(random.Random(seed), W, H)[1]).save(buf, format="GIF")
    return buf.getvalue()


def _mp4(seed: int) -> bytes:
    return encode_mp4(render_video(random.Random(seed), W, H, FRAMES)[1], 8)


def _webm(seed: int) -> bytes:
    clip = render_video(random.Random(seed), W, H, FRAMES)[1]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _cut(data: bytes) -> bytes:
    return data[: int(len(data) * 0.4)]


TXT = b"a red square"
ESCAPE = f"escape_{uuid.uuid4().hex[:12]}"  # unique, so finding it anywhere means it was written


def image_corpus() -> tuple[list, list[str], dict[str, list[str]]]:
    """(members, good keys, {reason: bad keys}) of an image shard with every kind of breakage."""
    png = _png(1)
    members = [  # broken ones first: a reader that stops at the first good ones misses none
        ("good_jpg.jpg", _jpg(2)), ("good_jpg.txt", TXT),
        ("png_named_jpg.jpg", png), ("png_named_jpg.txt", TXT),  # decoders go by content: fine
        ("zero_byte.png", b""), ("zero_byte.txt", TXT),
        ("truncated_png.png", _cut(png)), ("truncated_png.txt", TXT),
        ("truncated_jpg.jpg", _cut(_jpg(3))), ("truncated_jpg.txt", TXT),
        ("mp4_named_png.png", _mp4(4)), ("mp4_named_png.txt", TXT),
        ("gif_only.gif", _gif(5)), ("gif_only.txt", TXT),  # gif is not an accepted container
        ("npy_only.npy", np.zeros((H, W, 3), np.uint8).tobytes()), ("npy_only.txt", TXT),
        ("bad_utf8.png", png), ("bad_utf8.txt", b"a red \xff\xfe square"),
        ("dir_member.png", None), ("dir_member.txt", TXT),
        ("symlink_member.png", None), ("symlink_member.txt", TXT),
        ("hardlink_member.png", None), ("hardlink_member.txt", TXT),
        (f"../{ESCAPE}.png", png), (f"../{ESCAPE}.txt", TXT),
        (f"/tmp/{ESCAPE}.png", png), (f"/tmp/{ESCAPE}.txt", TXT),
        ("good_last.png", _png(6)), ("good_last.txt", TXT),
    ]
    members += [m for i in range(3) for m in ((f"good_{i}.png", _png(10 + i)), (f"good_{i}.txt", TXT))]
    special = {"dir_member.png": ("dir", "dir_member.png"),
               "symlink_member.png": ("symlink", "symlink_member.png", "/etc/passwd"),
               "hardlink_member.png": ("hardlink", "hardlink_member.png", "good_0.png")}
    members = [special.get(m[0], m) for m in members]
    good = ["good_jpg", "png_named_jpg", "good_last", "good_0", "good_1", "good_2"]  # tar order
    bad = {
        "undecodable_media": ["zero_byte", "truncated_png", "truncated_jpg", "mp4_named_png"],
        "missing_media": ["gif_only", "npy_only", "dir_member", "symlink_member", "hardlink_member"],
        "bad_caption_encoding": ["bad_utf8"],
        "unsafe_key": [f"../{ESCAPE}", f"/tmp/{ESCAPE}"],
    }
    return members, good, bad


def video_corpus() -> tuple[list, list[str], dict[str, list[str]]]:
    mp4 = _mp4(1)
    members = [
        ("good_mp4.mp4", mp4), ("good_mp4.txt", TXT),
        ("good_webm.webm", _webm(2)), ("good_webm.txt", TXT),
        ("truncated_mp4.mp4", _cut(mp4)), ("truncated_mp4.txt", TXT),
        ("zero_byte.mp4", b""), ("zero_byte.txt", TXT),
        ("truncated_webm.webm", _cut(_webm(3))), ("truncated_webm.txt", TXT),
        ("gif_named_mp4.mp4", _gif(4)), ("gif_named_mp4.txt", TXT),
        ("png_named_mp4.mp4", _png(5)), ("png_named_mp4.txt", TXT),
        ("gif_only.gif", _gif(6)), ("gif_only.txt", TXT),
        ("json_caption.mp4", mp4), ("json_caption.json", b'{"caption": "\xff"}'),
        ("good_json.mp4", _mp4(7)), ("good_json.json", json.dumps({"caption": "a blue circle"}).encode()),
    ]
    good = ["good_mp4", "good_webm", "good_json"]
    bad = {
        "undecodable_media": ["truncated_mp4", "zero_byte", "truncated_webm", "gif_named_mp4", "png_named_mp4"],
        "missing_media": ["gif_only"],
        "bad_caption_json": ["json_caption"],
    }
    return members, good, bad


def _files_under(root) -> set[str]:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize("modality", ["image", "video"])
def test_every_breakage_is_counted_under_its_reason(modality, tmp_path, monkeypatch):
    members, good, bad = image_corpus() if modality == "image" else video_corpus()
    data = tmp_path / "data"
    data.mkdir()
    shard = data / f"corrupt-{modality}.tar"
    write_tar(shard, members)
    gz = data / f"corrupt-{modality}.tar.gz"  # gzip'd tars are accepted (webdataset and the scan read them)
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative write (e.g. of ../escape) would land next to it
    before = _files_under(tmp_path)

    samples = len(good) + sum(len(k) for k in bad.values())
    scan = scan_shards([str(shard), str(gz)])
    assert scan.bad == [] and scan.counts == {str(shard): samples, str(gz): samples}
    for path in (shard, gz):
        stream = ShardStream([str(path)], modality=modality, frames=FRAMES, height=H, width=W, seed=0,
                             shuffle_buffer=0, sample_counts={str(path): samples}, batch_size=1)
        out = list(itertools.islice(iter(stream), 3 * len(good)))  # three epochs, repeat passes included
        # Training goes on: every epoch yields exactly the good samples, in tar order.
        assert [s["key"] for s in out] == good * 3
        assert all(s["pixels"].shape == ((3, FRAMES, H, W) if modality == "video" else (3, H, W)) for s in out)
        c = stream.counter
        assert c.skips == {r: len(keys) for r, keys in bad.items()}
        assert c.seen == samples  # each sample once, though read three times
        assert {r: sorted(k) for r, k in c.examples.items()} == {
            r: sorted(f"{path}:{k}" for k in keys[: c.max_examples]) for r, keys in bad.items()}

    assert _files_under(tmp_path) == before  # nothing written: not beside the shards, not in cwd
    assert not os.path.exists(f"/tmp/{ESCAPE}.png") and not os.path.exists(tmp_path.parent / f"{ESCAPE}.png")


def test_corrupt_shard_next_to_good_ones_trains_balanced(small_image, tmp_path):
    """Two ranks, one of them given the corrupt shard: both yield full quotas; counts stay exact."""
    members, good, bad = image_corpus()
    shard = tmp_path / "corrupt.tar"
    write_tar(shard, members)
    shards = [str(shard), *map(str, small_image)]
    scan = scan_shards(shards)
    streams = [ShardStream(shards, modality="image", frames=1, height=H, width=W, seed=0, rank=r, world_size=2,
                           shuffle_buffer=4, sample_counts=scan.counts, batch_size=2) for r in range(2)]
    for stream in streams:
        quota = stream.last_plan.samples_per_rank
        assert len(list(itertools.islice(iter(stream), 4 * quota))) == 4 * quota
    samples = sum(scan.counts.values())
    for stream in streams:
        c = stream.counter
        # Four epochs re-read shards many times; a sample is still counted at most once.
        assert c.seen <= samples
        assert all(c.skips[r] <= len(bad[r]) for r in c.skips)
        bad_keys = {f"{shard}:{k}" for keys in bad.values() for k in keys}
        assert {k for keys in c.examples.values() for k in keys} <= bad_keys
    assert any(s.counter.skipped for s in streams)  # the corrupt shard was read, and training went on
