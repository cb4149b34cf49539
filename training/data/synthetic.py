"""Synthetic, learnable webdataset shards for smoke tests, demos and benchmarks.

Each sample shows one coloured shape on a plain dark background and its caption names
exactly what is shown ("a red circle moving left" / "a blue square"), so a model can learn
the mapping from caption to pixels. Output is a pure function of the arguments: the same
seed gives byte-identical tar files.

Sizes are ``(width, height)``, as in the CLI's ``--size WxH``.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tarfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..fsio import atomic_write_bytes
from ..media_io import encode_mp4, encode_png
from .errors import listed

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
MOTIONS: tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down")
BACKGROUND = np.array((18, 18, 26), dtype=np.float32)
#: Good samples written by :func:`make_bad_shard` next to the bad ones.
GOOD_IN_BAD_SHARD = 2

_SUPERSAMPLE = 4  # anti-aliased edges: sub-pixel motion still changes every frame


# ----------------------------------------------------------------------------- rendering


def _coverage(shape: str, cx: float, cy: float, r: float, width: int, height: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, (height, width) float32 in [0, 1]."""
    ss = _SUPERSAMPLE
    xs = (np.arange(width * ss, dtype=np.float32) + 0.5) / ss
    ys = (np.arange(height * ss, dtype=np.float32) + 0.5) / ss
    x, y = np.meshgrid(xs - cx, ys - cy)
    if shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "triangle":  # apex up, base at the bottom
        inside = (y <= r) & (np.abs(x) <= (y + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(height, ss, width, ss).mean(axis=(1, 3), dtype=np.float32)


def _paint(colour: str, cover: np.ndarray) -> np.ndarray:
    fg = np.array(COLOURS[colour], dtype=np.float32)
    rgb = BACKGROUND + cover[..., None] * (fg - BACKGROUND)
    return np.rint(rgb).astype(np.uint8)


def render_video(rng: random.Random, width: int, height: int, frames: int) -> tuple[str, np.ndarray]:
    """A random (caption, frames) pair; frames is (F, height, width, 3) uint8."""
    colour, shape, motion = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(MOTIONS)
    r = min(width, height) * rng.uniform(0.15, 0.2)
    lo_x, hi_x, lo_y, hi_y = r + 1, width - r - 1, r + 1, height - r - 1
    # The shape crosses the frame along the motion axis; its other coordinate is random.
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    if motion in ("moving left", "moving right"):
        xs = lo_x + (hi_x - lo_x) * (t if motion == "moving right" else 1 - t)
        ys = np.full(frames, rng.uniform(lo_y, hi_y))
    else:
        ys = lo_y + (hi_y - lo_y) * (t if motion == "moving down" else 1 - t)
        xs = np.full(frames, rng.uniform(lo_x, hi_x))
    clip = np.stack([_paint(colour, _coverage(shape, x, y, r, width, height)) for x, y in zip(xs, ys)])
    return f"a {colour} {shape} {motion}", clip


def render_image(rng: random.Random, width: int, height: int) -> tuple[str, np.ndarray]:
    """A random (caption, image) pair; image is (height, width, 3) uint8."""
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    r = min(width, height) * rng.uniform(0.15, 0.25)
    cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
    return f"a {colour} {shape}", _paint(colour, _coverage(shape, cx, cy, r, width, height))


# ----------------------------------------------------------------------------- encoding


def _write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    """Write a tar with fixed metadata (mtime, owner, mode) so equal content gives equal bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    # Atomic: a crash never leaves a half shard. No fsync: synthetic shards are re-made in seconds.
    atomic_write_bytes(path, buf.getvalue(), fsync=False)


def _validate(kind: str, size: tuple[int, int], frames: int, fps: int) -> tuple[int, int]:
    if kind not in ("video", "image"):
        raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    width, height = (int(v) for v in size)
    if width < 8 or height < 8:
        raise ValueError(f"size {width}x{height} is too small; use at least 8x8")
    if kind == "video":
        if width % 2 or height % 2:
            raise ValueError(
                f"video size {width}x{height} must have even width and height (H.264 yuv420p); "
                f"try {width + width % 2}x{height + height % 2}"
            )
        if frames < 1 or fps < 1:
            raise ValueError(f"frames and fps must be >= 1, got frames={frames}, fps={fps}")
    return width, height


def _sample_members(
    kind: str, key: str, rng: random.Random, width: int, height: int, frames: int, fps: int
) -> list[tuple[str, bytes]]:
    if kind == "video":
        caption, clip = render_video(rng, width, height, frames)
        media = ("mp4", encode_mp4(clip, fps))
    else:
        caption, image = render_image(rng, width, height)
        media = ("png", encode_png(image))
    return [(f"{key}.{media[0]}", media[1]), (f"{key}.txt", caption.encode("utf-8"))]


# ----------------------------------------------------------------------------- public API


def make_data(
    kind: str,
    out: Union[str, Path],
    shards: int,
    samples_per_shard: int,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    frames: int = 17,
    fps: int = 8,
) -> list[Path]:
    """Write ``shards`` webdataset tars of synthetic samples to ``out``; return their paths.

    Files are ``out/shard-000000.tar``, ...; keys are ``{shard:06d}_{index:06d}``. ``kind``
    is "video" (H.264 mp4 + txt) or "image" (png + txt); ``size`` is (width, height).
    """
    width, height = _validate(kind, size, frames, fps)
    if shards < 1 or samples_per_shard < 1:
        raise ValueError(f"shards and samples_per_shard must be >= 1, got {shards}, {samples_per_shard}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"shard-{s:06d}.tar" for s in range(shards)]
    # A directory is itself a valid data.shards spec; leftover tars from an earlier run would
    # be mixed into training unnoticed, so refuse rather than write next to them.
    stale = sorted(p.name for p in out.glob("*.tar") if p not in paths)
    if stale:
        raise FileExistsError(
            f"{out} already holds other .tar files ({listed(stale)}); "
            f"they would be read as shards too. Remove them or choose an empty --out directory."
        )
    for s, path in enumerate(paths):
        members: list[tuple[str, bytes]] = []
        for i in range(samples_per_shard):
            # One generator per sample, seeded by a stable integer derivation.
            rng = random.Random((seed * 1_000_003 + s) * 1_000_003 + i)
            members += _sample_members(kind, f"{s:06d}_{i:06d}", rng, width, height, frames, fps)
        _write_tar(path, members)
    return paths


def make_bad_shard(
    out_path: Union[str, Path],
    size: tuple[int, int],
    frames: int,
    kind: str = "video",
    seed: int = 0,
    fps: int = 8,
) -> dict[str, int]:
    """Write one tar mixing good and broken samples; return the expected skips per reason.

    Contents: ``GOOD_IN_BAD_SHARD`` good samples, then one sample each with truncated media
    (first 40% of the bytes), an empty caption, no caption member, media at half the size,
    and (video only) fewer than ``frames`` frames.
    """
    width, height = _validate(kind, size, frames, fps)
    if kind == "video" and frames < 2:
        raise ValueError("make_bad_shard needs frames >= 2 to write a too-short clip")
    # Half the size; video sides rounded down to even, as H.264 yuv420p requires.
    small = (width // 4 * 2, height // 4 * 2) if kind == "video" else (width // 2, height // 2)

    def media(i: int, w: int = width, h: int = height, n: int = frames) -> tuple[str, bytes]:
        rng = random.Random(seed * 1_000_003 + i)
        if kind == "video":
            return "mp4", encode_mp4(render_video(rng, w, h, n)[1], fps)
        return "png", encode_png(render_image(rng, w, h)[1])

    members: list[tuple[str, bytes]] = []
    for i in range(GOOD_IN_BAD_SHARD):
        rng = random.Random(seed * 1_000_003 + 100 + i)
        members += _sample_members(kind, f"good_{i:03d}", rng, width, height, frames, fps)
    ext, data = media(1)
    # The mp4 muxer writes the index (moov) last, so a truncated file has none at all.
    members += [(f"truncated_media.{ext}", data[: int(len(data) * 0.4)]), ("truncated_media.txt", b"a shape")]
    ext, data = media(2)
    members += [(f"empty_caption.{ext}", data), ("empty_caption.txt", b"")]
    ext, data = media(3)
    members += [(f"missing_caption.{ext}", data)]
    ext, data = media(4, *small)
    members += [(f"too_small.{ext}", data), ("too_small.txt", b"a small shape")]
    expected = {"undecodable_media": 1, "empty_caption": 1, "missing_caption": 1, "too_small": 1}
    if kind == "video":
        ext, data = media(5, n=max(1, frames // 2))
        members += [(f"too_few_frames.{ext}", data), ("too_few_frames.txt", b"a short clip")]
        expected["too_few_frames"] = 1
    _write_tar(Path(out_path), members)
    return expected


# ----------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 64x64, got {text!r}")
    w, h = (int(p) for p in parts)
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size {w}x{h} is too small; use at least 8x8")
    return w, h


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Parser for ``lorabench make-data``."""
    p = argparse.ArgumentParser(
        prog="lorabench make-data",
        description="Write synthetic, learnable webdataset shards (coloured shapes with captions).",
    )
    p.add_argument("--kind", choices=("video", "image"), required=True, help="video (mp4) or image (png) samples")
    p.add_argument("--out", required=True, help="output directory for shard-NNNNNN.tar files")
    p.add_argument("--shards", type=_positive, required=True, help="number of tar shards")
    p.add_argument("--samples-per-shard", type=_positive, required=True, help="samples in each shard")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical shards (default 0)")
    p.add_argument("--size", type=_parse_size, default=(64, 64), help="frame size WIDTHxHEIGHT (default 64x64)")
    p.add_argument("--frames", type=_positive, default=17, help="frames per video clip (default 17)")
    p.add_argument("--fps", type=_positive, default=8, help="video frame rate (default 8)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lorabench make-data ...``: write shards, print their paths and a summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = make_data(
            args.kind, args.out, args.shards, args.samples_per_shard,
            seed=args.seed, size=args.size, frames=args.frames, fps=args.fps,
        )
    except (ValueError, FileExistsError) as exn:
        parser.error(str(exn))
    for path in paths:
        print(path)
    w, h = args.size
    what = f"{args.frames}-frame {w}x{h} videos at {args.fps} fps" if args.kind == "video" else f"{w}x{h} images"
    total = args.shards * args.samples_per_shard
    print(f"wrote {len(paths)} shard(s), {total} samples ({what}, seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
