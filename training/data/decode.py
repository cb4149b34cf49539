"""Decode one raw webdataset sample (a dict of member bytes) into a caption and pixels.

Everything here is pure and safe on untrusted bytes: media goes through PyAV / Pillow,
captions through ``bytes.decode`` / ``json.loads``. No pickle-based decoder is ever used.

Every rejection raises :class:`BadSample` with a short machine-readable ``reason``
(see :data:`REASONS`) so the pipeline can count skips per reason.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from fractions import Fraction
from typing import Any, Iterator, Optional

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

VIDEO_EXTS: tuple[str, ...] = ("mp4", "webm")
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

#: Every reason a sample can be rejected with, in the order the pipeline checks them.
REASONS: tuple[str, ...] = (
    "unsafe_key",
    "missing_caption",
    "empty_caption",
    "bad_caption_json",
    "bad_caption_encoding",
    "caption_too_long",  # only under data.long_captions=skip (see training.data.captions)
    "missing_media",
    "undecodable_media",
    "too_small",
    "too_few_frames",
)


class BadSample(Exception):
    """A sample that must be skipped; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- keys


def check_key(key: str) -> None:
    """Reject sample keys that are not plain relative names (``BadSample("unsafe_key")``).

    Nothing here writes tar members to disk, but keys travel on (logs, exports, file names
    chosen from them), so an absolute path, a ``..`` component or a control character in
    a member name marks a crafted or broken shard and the sample is not used.
    """
    if not key or key.startswith("/") or "\\" in key:
        raise BadSample("unsafe_key", f"key {key!r} is empty, absolute or has a backslash")
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        raise BadSample("unsafe_key", f"key {key!r} has a control character")
    if ".." in key.split("/"):
        raise BadSample("unsafe_key", f"key {key!r} has a '..' path component")


# ----------------------------------------------------------------------------- captions


def caption_of(sample: dict[str, Any]) -> str:
    """Return the caption of a raw sample: the ``txt`` member, else ``json``'s ``caption`` field.

    Raises ``BadSample`` with reason ``missing_caption`` (neither member), ``empty_caption``
    (empty or whitespace only), ``bad_caption_json`` (invalid JSON, not an object, or no
    string ``caption`` field) or ``bad_caption_encoding`` (not UTF-8).
    """
    if "txt" in sample:
        raw = sample["txt"]
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exn:
            # Decoding with errors="replace" would silently train on mangled captions.
            raise BadSample("bad_caption_encoding", f"txt is not UTF-8 ({exn})") from exn
    elif "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exn:  # JSONDecodeError is a ValueError
            raise BadSample("bad_caption_json", f"invalid json ({exn})") from exn
        if not isinstance(meta, dict) or "caption" not in meta:
            raise BadSample("bad_caption_json", "json has no 'caption' field")
        text = meta["caption"]
        if not isinstance(text, str):
            raise BadSample("bad_caption_json", f"'caption' is {type(text).__name__}, not a string")
    else:
        raise BadSample("missing_caption", "sample has neither a txt nor a json member")
    text = text.strip()
    if not text:
        raise BadSample("empty_caption", "caption is empty")
    return text


def media_of(sample: dict[str, Any], modality: str) -> tuple[str, bytes]:
    """Return ``(extension, bytes)`` of the sample's first media member for ``modality``.

    Video looks for ``mp4`` then ``webm``; image for ``jpg``, ``jpeg``, ``png``, ``webp``.
    Raises ``BadSample("missing_media")`` when none is present.
    """
    if modality == "video":
        exts = VIDEO_EXTS
    elif modality == "image":
        exts = IMAGE_EXTS
    else:
        raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
    for ext in exts:
        if ext in sample:
            return ext, sample[ext]
    present = sorted(k for k in sample if not k.startswith("__"))
    raise BadSample("missing_media", f"no {'/'.join(exts)} member (has: {', '.join(present) or 'nothing'})")


# ----------------------------------------------------------------------------- pixels


def _check_size(src_h: int, src_w: int, height: int, width: int) -> None:
    # We never upscale: an upscaled source is blurry and the model would learn the blur.
    if src_h < height or src_w < width:
        raise BadSample(
            "too_small", f"source is {src_w}x{src_h}, smaller than the target {width}x{height}"
        )


# Names the resize-and-crop rule below; part of every latent cache key (training.cache): change
# it whenever the rule changes, so caches made with the old rule are refused, not reused.
CROP_POLICY = "cover-resize-bilinear-antialias+center-crop@1"


def _resize_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> (N, 3, height, width) float32 in [-1, 1].

    Aspect-preserving resize so the image just covers the target (the shorter side relative
    to the target matches it), then a centre crop. Antialiased bilinear, so downscaling does
    not alias; the source is already known to be at least as large as the target.
    """
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    y = x.float()
    if (new_h, new_w) != (h, w):  # exact-size sources pass through bit-exactly
        y = F.interpolate(y, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    y = y[..., top : top + height, left : left + width]
    return (y / 127.5 - 1.0).clamp_(-1.0, 1.0)


_MP4_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM


def _sniff_video_format(data: bytes) -> str:
    """Pick the demuxer from the magic bytes instead of letting FFmpeg probe.

    Probing would accept any of FFmpeg's formats, including playlists (HLS, concat) that
    make the demuxer open other files or URLs named inside untrusted sample bytes.
    """
    if data[4:8] in _MP4_ATOMS:
        return "mp4"
    if data[:4] == _EBML_MAGIC:
        return "matroska"
    raise BadSample("undecodable_media", "not an MP4 or WebM/Matroska container")


def _checked_frames(decoded: Iterator[av.VideoFrame], height: int, width: int) -> Iterator[av.VideoFrame]:
    """Pass decoded frames through, rejecting sources too small for the target or changing size."""
    src_size: Optional[tuple[int, int]] = None
    for frame in decoded:
        if src_size is None:
            src_size = (frame.height, frame.width)
            # Check on the first frame so too-small clips cost one frame of decoding.
            _check_size(frame.height, frame.width, height, width)
        elif (frame.height, frame.width) != src_size:
            raise BadSample("undecodable_media", "frame size changes within the clip")
        yield frame


def _frame_pixels(frame: av.VideoFrame, height: int, width: int) -> torch.Tensor:
    """One decoded frame -> float32 ``(3, height, width)`` in [-1, 1]."""
    rgb = frame.to_ndarray(format="rgb24")  # (h, w, 3) uint8
    # Resize frame by frame: a whole HD clip as float32 would need gigabytes.
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
    return _resize_crop(pixels, height, width)[0]


def _stream_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's average frame rate; resampling cannot work without one."""
    rate = stream.average_rate
    if rate is None or rate <= 0:
        raise BadSample("undecodable_media", f"the video stream has no valid frame rate ({rate})")
    return Fraction(rate)


def _frame_time(frame: av.VideoFrame, index: int, time_base: Optional[Fraction], rate: Fraction) -> Fraction:
    """Presentation time in seconds, exact (Fractions: ties between frames must stay ties)."""
    if frame.pts is not None and time_base is not None:
        return frame.pts * Fraction(time_base)
    return index / rate  # no timestamp: assume constant rate from the start


def _fps_text(rate: Fraction | float) -> str:
    return f"{float(rate):.4g}"  # 30, 29.97, 23.98


def _resampled(
    decoded: Iterator[av.VideoFrame], stream: av.video.stream.VideoStream, frames: int, fps: float
) -> Iterator[av.VideoFrame]:
    """Yield ``frames`` decoded frames at ``fps``: the nearest one in time to each target.

    Target k is at ``t0 + k / fps`` (``t0``: the first frame's time). A frame is yielded again
    when it is the nearest to several targets (source slower than ``fps``) and never when it
    is the nearest to none (source faster). Each target is settled by the first frame at or
    after it, so decoding stops at most one frame past the last frame used. Yields nothing for a clip
    with no frames (the caller reports that).
    """
    rate = _stream_rate(stream)
    step = 1 / Fraction(fps)
    t0: Optional[Fraction] = None
    prev: Optional[av.VideoFrame] = None
    prev_t = Fraction(0)
    k = 0
    for index, frame in enumerate(decoded):
        t = _frame_time(frame, index, stream.time_base, rate)
        if t0 is None:
            t0 = t
        elif t < prev_t:
            # Targets are settled in time order; a clock that runs backwards has no "nearest".
            raise BadSample("undecodable_media", f"presentation times go backwards at frame {index}")
        # Invariant: every target not yet settled is later than prev_t.
        while k < frames and t >= t0 + k * step:
            target = t0 + k * step
            # Ties go to the earlier frame: resampling never looks ahead of a target.
            use_prev = prev is not None and target - prev_t <= t - target
            yield prev if use_prev else frame
            k += 1
        if k == frames:
            return
        prev, prev_t = frame, t
    if prev is None or t0 is None:
        return
    # The last frame is shown until one frame period after its time: targets before that
    # take it, later ones are past the end of the clip.
    end = prev_t + 1 / rate
    if t0 + (frames - 1) * step >= end:
        raise BadSample(
            "too_few_frames",
            f"clip has {float(end - t0):.2f} s at {_fps_text(rate)} fps; {frames} frames at "
            f"{_fps_text(fps)} fps need more than {float((frames - 1) * step):.2f} s",
        )
    while k < frames:
        yield prev
        k += 1


def check_fps(fps: Optional[float]) -> None:
    """Raise ``ValueError`` unless ``fps`` is None (native rate) or a positive, finite frame rate."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")


def decode_video(
    data: bytes, frames: int, height: int, width: int, fps: Optional[float] = None
) -> torch.Tensor:
    """Decode a video into a float32 ``(3, frames, height, width)`` tensor in [-1, 1].

    Clip selection: always from the first decoded frame of the first video stream (no random
    offset), so the result is a pure function of the bytes (and the arguments).

    Frame sampling: with ``fps=None``, the first ``frames`` decoded frames at the clip's
    native rate. With ``fps``, the clip is resampled by timestamp: output frame k is the
    decoded frame whose presentation time (``pts * time_base``; ``index / average_rate``
    when a frame has no pts) is the nearest to ``t0 + k / fps``, ``t0`` being the first
    frame's time, the earlier frame on a tie. Frames repeat when the source rate is below
    ``fps`` and are skipped when it is above; the clip counts as lasting until one frame
    period (``1 / average_rate``) after its last frame. Decoding stops as soon as the last
    frame needed is known.

    Each kept frame is resized aspect-preserving so the target is just covered, then
    centre-cropped (see ``_resize_crop``).

    Raises ``BadSample``: ``undecodable_media`` (PyAV error, no video stream, zero frames;
    with ``fps``, also no valid stream rate or timestamps that go backwards), ``too_small``
    (source smaller than the target in either dimension), ``too_few_frames`` (with ``fps``,
    the message names the clip's duration and the duration needed).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    check_fps(fps)
    out: list[torch.Tensor] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format=_sniff_video_format(data)) as container:
            if not container.streams.video:
                raise BadSample("undecodable_media", "no video stream")
            stream = container.streams.video[0]
            decoded = _checked_frames(container.decode(stream), height, width)
            if fps is None:
                picked = itertools.islice(decoded, frames)
            else:
                picked = _resampled(decoded, stream, frames, fps)
            last: Optional[av.VideoFrame] = None
            for frame in picked:
                # A repeated frame (source slower than fps) is converted once.
                out.append(out[-1] if frame is last else _frame_pixels(frame, height, width))
                last = frame
    except BadSample:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as exn:
        raise BadSample("undecodable_media", f"PyAV could not decode the video ({exn})") from exn
    if not out:
        raise BadSample("undecodable_media", "the video has no decodable frames")
    if len(out) < frames:
        raise BadSample("too_few_frames", f"clip has {len(out)} frames, need {frames}")
    return torch.stack(out, dim=1).contiguous()  # (3, F, H, W)


_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
_EXIF_ORIENTATION = 0x0112


def decode_image(data: bytes, height: int, width: int) -> torch.Tensor:
    """Decode an image into a float32 ``(3, height, width)`` tensor in [-1, 1].

    Pillow decodes (EXIF orientation applied, converted to RGB); resize and crop follow the
    same rules as :func:`decode_video`. Raises ``BadSample`` ``undecodable_media`` or
    ``too_small``.
    """
    try:
        # Only the formats we accept: Pillow would otherwise also open e.g. EPS, which
        # runs Ghostscript on the sample bytes.
        with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as img:
            # EXIF orientations 5-8 rotate by 90 degrees, swapping the sides.
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            src_h, src_w = (img.width, img.height) if orientation in (5, 6, 7, 8) else img.size[::-1]
            # The size comes from the header, so too-small images are rejected undecoded.
            _check_size(src_h, src_w, height, width)
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"))
    except BadSample:
        raise
    except Exception as exn:  # Pillow raises many types on corrupt data (OSError, SyntaxError, ...)
        raise BadSample("undecodable_media", f"Pillow could not decode the image ({exn})") from exn
    pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0)
    return _resize_crop(pixels, height, width)[0].contiguous()
