"""Decoding real mp4/png bytes and captions."""

from __future__ import annotations

import json
import random
import tarfile

import pytest
import torch

from training.data.decode import BadSample, caption_of, decode_image, decode_video, media_of
from training.data.synthetic import render_image, render_video
from training.media_io import encode_mp4, encode_png


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
