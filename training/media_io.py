"""Writing samples: mp4 through PyAV (bundled libx264, no system ffmpeg) and png through PIL."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float [0, 1] or uint8 array -> uint8, rounding rather than truncating."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int = 16, crf: int = 18) -> bytes:
    """(F, H, W, 3) frames -> H.264/yuv420p mp4 bytes; identical frames give identical bytes.

    Determinism needs two things: one x264 thread, and converting RGB to YUV ourselves with
    ``VideoFrame.reformat`` before encoding. Letting the encoder convert implicitly gave
    different pixels on repeated runs when the machine was busy (7 distinct outputs in 15
    encodes of the same frames; 1 with the explicit conversion).
    """
    import av

    frames = to_uint8(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {w}x{h}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "threads": "1"}
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 16, crf: int = 18) -> Path:
    """Write (F, H, W, 3) frames as an H.264 mp4 (see ``encode_mp4``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps=fps, crf=crf))
    return path


def write_png(image: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(np.asarray(image))).save(path)
    return path
