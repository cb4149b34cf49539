"""Read generated and reference media back as uint8 arrays for feature extraction."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from training.errors import LorabenchError


class MediaError(LorabenchError, ValueError):
    """A sample file that cannot be read; metrics count it as skipped, with the reason."""


def read_media(path: str | Path) -> np.ndarray:
    """(F, H, W, 3) uint8 for .mp4/.webm, (H, W, 3) uint8 for images."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: file not found")
    data = p.read_bytes()
    if p.suffix.lower() in (".mp4", ".webm", ".mkv"):
        return decode_video_uint8(data, str(p))
    return decode_image_uint8(data, str(p))


def decode_video_uint8(data: bytes, name: str = "video") -> np.ndarray:
    import av
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            if not c.streams.video:
                raise MediaError(f"{name}: no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as e:
        raise MediaError(f"{name}: PyAV could not decode it ({e})") from None
    if not frames:
        raise MediaError(f"{name}: no decodable frames")
    return np.stack(frames)


def decode_image_uint8(data: bytes, name: str = "image") -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as img:
            return np.asarray(img.convert("RGB")).copy()
    except Exception as e:  # Pillow raises many types on corrupt data
        raise MediaError(f"{name}: Pillow could not decode it ({e})") from None


def decode_like_training(raw: bytes, modality: str, width: int, height: int, frames: int,
                         fps: Optional[float] = None) -> np.ndarray:
    """Real media as the trainer sees it, as uint8: (F, H, W, 3) or (H, W, 3).

    First ``frames`` frames, aspect-preserving resize + centre crop (training.data.decode), so
    real and generated media enter the feature extractors at the same size and length. Raises
    the decoder's ``BadSample`` (with its reason) on media it rejects.
    """
    import torch

    from training.data.decode import decode_image, decode_video

    t = decode_video(raw, frames, height, width, fps) if modality == "video" else decode_image(raw, height, width)
    # The decoders return [-1, 1] floats (C, [F,] H, W); back to uint8 channels-last.
    arr = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return (arr.permute(1, 2, 3, 0) if modality == "video" else arr.permute(1, 2, 0)).numpy()


def reference_media(shards: Any, modality: str, width: int, height: int, frames: int,
                    max_samples: Optional[int], fps: Optional[float] = None
                    ) -> Iterator[tuple[str, Optional[np.ndarray], Optional[str]]]:
    """(key, uint8 media or None, skip reason) for each reference sample, in shard order
    (decoded by :func:`decode_like_training`)."""
    import webdataset as wds

    from training.data.decode import BadSample, media_of
    from training.data.shards import list_shards

    urls = list_shards(shards)
    n = 0
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for sample in ds:
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            _, raw = media_of(sample, modality)
            media = decode_like_training(raw, modality, width, height, frames, fps)
        except BadSample as e:
            yield key, None, e.reason
            continue
        yield key, media, None
        n += 1
        if max_samples is not None and n >= max_samples:
            return
