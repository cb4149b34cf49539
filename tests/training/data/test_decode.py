"""Decoding real mp4/png bytes and captions."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import tarfile
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from training.data.decode import BadSample, caption_of, decode_image, decode_video, media_of
from training.data.pipeline import ShardStream
from training.data.synthetic import render_image, render_video
from training.media_io import encode_mp4, encode_png

from .conftest import counted


def _first(path, ext):
    with tarfile.open(path) as tar:
        name = next(n for n in tar.getnames() if n.endswith("." + ext))
        return tar.extractfile(name).read()


def test_mp4_round_trip(small_video):
    pixels = decode_video(_first(small_video[0], "mp4"), frames=5, height=32, width=32)
    assert pixels.shape == (3, 5, 32, 32) and pixels.dtype == torch.float32
    assert -1.0 <= pixels.min() < -0.8 and 0.5 < pixels.max() <= 1.0  # dark background, bright shape
    for i in range(4):  # the shape moves: every frame differs from the next
        assert (pixels[:, i + 1] - pixels[:, i]).abs().mean() > 0.01


def test_video_matches_rendered_frames():
    caption, clip = render_video(random.Random(3), 32, 32, 5)
    pixels = decode_video(encode_mp4(clip), frames=5, height=32, width=32)
    expected = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert (pixels - expected).abs().mean() < 0.05  # lossy, but close (crf 18)


def test_video_takes_first_frames_and_resizes_then_crops():
    _, clip = render_video(random.Random(1), 48, 32, 6)
    pixels = decode_video(encode_mp4(clip), frames=4, height=16, width=16)
    assert pixels.shape == (3, 4, 16, 16)  # 48x32 -> 24x16 -> centre crop 16x16


@pytest.mark.parametrize("frames, height, width, reason", [
    (5, 64, 32, "too_small"), (5, 32, 64, "too_small"), (6, 32, 32, "too_few_frames"),
])
def test_video_rejections(small_video, frames, height, width, reason):
    with pytest.raises(BadSample) as exc:
        decode_video(_first(small_video[0], "mp4"), frames=frames, height=height, width=width)
    assert exc.value.reason == reason


@pytest.mark.parametrize("data", [b"", b"not a video at all", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64])
def test_garbage_video_is_undecodable(data):
    with pytest.raises(BadSample) as exc:
        decode_video(data, frames=2, height=8, width=8)
    assert exc.value.reason == "undecodable_media"


# ----------------------------------------------------------------------------- frame rate

_GREY_FRAMES = 32  # grey levels 4, 12, ..., 252: 8 apart, H.264 (crf 18) moves them by <= 2
_GREY_SIZE = 16


def _grey_clip(fps: int, n: int = _GREY_FRAMES) -> bytes:
    """An mp4 at ``fps`` whose frame i is uniform grey 4 + 8 * i, so pixels name their index."""
    levels = 4 + 8 * (np.arange(n) % _GREY_FRAMES)
    frames = np.broadcast_to(levels[:, None, None, None], (n, _GREY_SIZE, _GREY_SIZE, 3))
    return encode_mp4(np.ascontiguousarray(frames, dtype=np.uint8), fps)


def _source_indices(pixels: torch.Tensor) -> list[int]:
    """Which grey frame each decoded frame of ``(3, F, H, W)`` pixels is."""
    levels = ((pixels + 1) * 127.5).mean(dim=(0, 2, 3))
    indices = torch.round((levels - 4) / 8)
    assert (levels - (4 + 8 * indices)).abs().max() < 3, levels  # clearly one grey, not a blend
    return [int(i) for i in indices]


def _nearest_indices(src_fps: int, fps: float, frames: int) -> list[int]:
    """Source frame i is at i / src_fps and target k at k / fps: the nearest i, ties rounding down."""
    return [math.ceil(Fraction(k) * src_fps / Fraction(fps) - Fraction(1, 2)) for k in range(frames)]


def _decode_grey(data: bytes, frames: int, fps) -> list[int]:
    return _source_indices(decode_video(data, frames, _GREY_SIZE, _GREY_SIZE, fps=fps))


def test_resample_simple_ratios():
    assert _decode_grey(_grey_clip(30), 16, fps=15) == list(range(0, 32, 2))  # every second frame
    assert _decode_grey(_grey_clip(10), 16, fps=20) == [i // 2 for i in range(16)]  # each twice
    assert _decode_grey(_grey_clip(24), 32, fps=24) == list(range(32))  # identity
    assert _decode_grey(_grey_clip(24), 32, fps=None) == list(range(32))


@pytest.mark.parametrize("src_fps, fps, frames", [
    (30, 16, 17), (30, 24, 25), (10, 16, 20), (10, 24, 25), (24, 16, 20), (24, 24.0, 32), (30, 23.5, 20),
])
def test_resample_picks_nearest_frame_by_time(src_fps, fps, frames):
    expected = _nearest_indices(src_fps, fps, frames)
    assert max(expected) < _GREY_FRAMES  # the clip is long enough for the nearest frames to exist
    assert _decode_grey(_grey_clip(src_fps), frames, fps=fps) == expected


def test_fps_none_is_first_frames_bit_exact():
    data = _grey_clip(30)
    with av.open(io.BytesIO(data)) as container:
        first = [f.to_ndarray(format="rgb24") for f in itertools.islice(container.decode(video=0), 7)]
    # At the source size nothing is resized: the pixels are the decoded frames, rescaled.
    expected = torch.from_numpy(np.stack(first)).permute(3, 0, 1, 2).float() / 127.5 - 1
    native = decode_video(data, 7, _GREY_SIZE, _GREY_SIZE)
    assert torch.equal(native, expected)
    assert torch.equal(decode_video(data, 7, _GREY_SIZE, _GREY_SIZE, fps=30), native)  # equal rates


def test_resample_too_short_clip_names_durations():
    _, clip = render_video(random.Random(0), 16, 16, 36)
    with pytest.raises(BadSample) as exc:
        decode_video(encode_mp4(clip, 30), 49, 16, 16, fps=24)
    assert exc.value.reason == "too_few_frames"
    assert exc.value.detail == "clip has 1.20 s at 30 fps; 49 frames at 24 fps need more than 2.00 s"


@pytest.mark.parametrize("src_fps, fps, frames, enough", [
    (30, 15, 8, 15), (10, 20, 5, 3), (24, 16, 9, 13), (30, 24, 20, 24),
])
def test_resample_length_boundary(src_fps, fps, frames, enough):
    # ``enough`` source frames is the fewest whose span (one period past the last frame)
    # reaches past the last target, (frames - 1) / fps. A target within that last period
    # takes the last frame (30 -> 24: target 19 is at source 23.75, shown by frame 23).
    expected = [min(i, enough - 1) for i in _nearest_indices(src_fps, fps, frames)]
    assert _decode_grey(_grey_clip(src_fps, enough), frames, fps) == expected
    with pytest.raises(BadSample) as exc:
        _decode_grey(_grey_clip(src_fps, enough - 1), frames, fps)
    assert exc.value.reason == "too_few_frames"


@pytest.mark.parametrize("fps", [0, -8.0, float("nan"), float("inf")])
def test_bad_fps_is_a_caller_error(small_video, fps):
    with pytest.raises(ValueError, match="fps"):
        decode_video(_first(small_video[0], "mp4"), frames=2, height=32, width=32, fps=fps)
    with pytest.raises(ValueError, match="fps"):
        ShardStream([str(small_video[0])], modality="video", frames=2, height=32, width=32, seed=0, fps=fps,
                    sample_counts=counted(small_video[:1]))


def test_shard_stream_resamples(small_video):
    # The synthetic clips are 5 frames at 8 fps: 3 frames at 4 fps are source frames 0, 2, 4.
    with tarfile.open(small_video[0]) as tar:
        raw = {n.split(".")[0]: tar.extractfile(n).read() for n in tar.getnames() if n.endswith(".mp4")}
    stream = ShardStream([str(small_video[0])], modality="video", frames=3, height=32, width=32,
                         seed=0, shuffle_buffer=0, fps=4, sample_counts=counted(small_video[:1]))
    samples = list(itertools.islice(iter(stream), len(raw)))
    assert sorted(s["key"] for s in samples) == sorted(raw)
    for s in samples:
        native = decode_video(raw[s["key"]], 5, 32, 32)
        assert torch.equal(s["pixels"], native[:, [0, 2, 4]])
    assert stream.counter.skipped == 0


def test_image_path(small_image):
    pixels = decode_image(_first(small_image[0], "png"), height=32, width=32)
    assert pixels.shape == (3, 32, 32) and -1.0 <= pixels.min() and pixels.max() <= 1.0
    _, image = render_image(random.Random(0), 32, 32)
    exact = decode_image(encode_png(image), height=32, width=32)
    assert torch.equal(exact, torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1)  # png is lossless
    assert decode_image(encode_png(image), height=16, width=8).shape == (3, 16, 8)


def test_image_rejections():
    _, image = render_image(random.Random(0), 32, 16)
    with pytest.raises(BadSample) as exc:
        decode_image(encode_png(image), height=32, width=32)
    assert exc.value.reason == "too_small"
    data = encode_png(image)
    with pytest.raises(BadSample) as exc:
        decode_image(data[: len(data) // 2], height=8, width=8)
    assert exc.value.reason == "undecodable_media"


def test_captions():
    assert caption_of({"txt": b" a red circle \n"}) == "a red circle"
    assert caption_of({"json": json.dumps({"caption": "a blue square"}).encode()}) == "a blue square"
    assert caption_of({"txt": b"from txt", "json": b'{"caption": "from json"}'}) == "from txt"
    for sample, reason in [
        ({"mp4": b""}, "missing_caption"),
        ({"txt": b"  \n"}, "empty_caption"),
        ({"json": b'{"caption": ""}'}, "empty_caption"),
        ({"json": b"{not json"}, "bad_caption_json"),
        ({"json": b'{"text": "x"}'}, "bad_caption_json"),
        ({"json": b'["x"]'}, "bad_caption_json"),
        ({"txt": b"\xff\xfe"}, "bad_caption_encoding"),
    ]:
        with pytest.raises(BadSample) as exc:
            caption_of(sample)
        assert exc.value.reason == reason, sample


def test_media_of():
    sample = {"__key__": "k", "webm": b"w", "mp4": b"m", "png": b"p", "txt": b"t"}
    assert media_of(sample, "video") == ("mp4", b"m")
    assert media_of(sample, "image") == ("png", b"p")
    assert media_of({"jpeg": b"j", "webp": b"x"}, "image") == ("jpeg", b"j")
    with pytest.raises(BadSample) as exc:
        media_of({"__key__": "k", "png": b"p"}, "video")
    assert exc.value.reason == "missing_media" and "png" in str(exc.value)


def test_unsafe_keys():
    from training.data.decode import check_key
    for key in ("000001_000002", "dir/sub/k", "./k", "a..b", "k.v2"):
        check_key(key)
    for key in ("", "../k", "a/../../k", "/etc/k", "a\\b", "k\x00", "line\nbreak", ".."):
        with pytest.raises(BadSample) as exc:
            check_key(key)
        assert exc.value.reason == "unsafe_key", key
