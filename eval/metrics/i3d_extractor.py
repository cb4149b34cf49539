"""I3D features for FVD: which frames, how they are resized and scaled, the batched network call.

Preprocessing, and the reference each choice follows:

* **Frames**: the first ``frames`` (default 16) consecutive frames of each video, as StyleGAN-V
  (universome/stylegan-v, ``src/metrics/metric_utils.py``: generated clips are frames
  ``0..num_frames-1``; real clips use ``load_n_consecutive``) and VideoGPT/TATS
  (``video[:sequence_length]``). A video with fewer frames is an error naming the sample:
  StyleGAN-V discards short videos and VideoGPT asserts, and silently padding or looping frames
  would change the number. I3D needs at least 9 frames (see ``eval/metrics/i3d.py``).
* **Resize**: every frame straight to 224x224, bilinear, ``align_corners=False``, no antialias,
  aspect ratio *not* preserved and no crop, as TATS (songweige/TATS ``tats/fvd/fvd.py``
  ``preprocess``) and StyleGAN-V's detector with ``resize=True`` (trilinear to (T, 224, 224),
  which is per-frame bilinear when T is unchanged). Square videos give the same input as the
  shorter-side-resize-and-center-crop variant (JunyaoHu/common_metrics_on_video_quality).
* **Scale**: uint8 [0, 255] -> ``2 x / 255 - 1`` in [-1, 1]; layout (B, 3, T, 224, 224).
* **Features**: the 400 pre-softmax logits, averaged over time (one step at 16 frames). A
  TorchScript StyleGAN-V detector is called with ``rescale=False, resize=False,
  return_features=True`` on the input above (see ``TorchScriptI3D``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from training.fsio import sha256_file

from .i3d import DEFAULT_BN_EPS, INPUT_SIZE, MIN_FRAMES, NUM_CLASSES, RANDOM_WEIGHTS_NOTE, load_i3d

DEFAULT_FRAMES = 16


def fvd_frame_indices(num_frames: int, frames: int = DEFAULT_FRAMES) -> np.ndarray:
    """Indices of the frames FVD reads from a video of ``num_frames``: the first ``frames``, in order.

    Raises ValueError when the video is shorter (we neither pad nor loop: both change the value).
    """
    if frames < MIN_FRAMES:
        raise ValueError(f"FVD frames={frames}: I3D needs at least {MIN_FRAMES} frames per clip")
    if num_frames < frames:
        raise ValueError(f"video has {num_frames} frames, FVD reads the first {frames}: generate at least "
                         f"{frames} frames or lower metrics.fvd.frames (>= {MIN_FRAMES})")
    return np.arange(frames)


def preprocess_video(video: np.ndarray, frames: int = DEFAULT_FRAMES) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (3, frames, 224, 224) in [-1, 1] (see module docstring)."""
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"FVD expects uint8 videos of shape (F, H, W, 3), got {video.dtype} {video.shape}")
    clip = torch.from_numpy(np.ascontiguousarray(video[fvd_frame_indices(video.shape[0], frames)]))
    clip = clip.permute(0, 3, 1, 2).float()  # (T, 3, H, W): frames as the batch of a 2-D resize
    clip = F.interpolate(clip, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                         antialias=False)
    clip = clip * 2.0 / 255.0 - 1.0  # TATS order: exact -1 and 1 at 0 and 255
    return clip.permute(1, 0, 2, 3).contiguous()


class I3DExtractor:
    """Feature extractor for FVD: uint8 videos (F, H, W, 3) -> I3D logits [B, 400] float64."""

    name = "i3d"
    dim = NUM_CLASSES

    def __init__(self, path: str | Path, frames: int = DEFAULT_FRAMES, device: str = "cpu", batch_size: int = 8,
                 bn_eps: float = DEFAULT_BN_EPS):
        if frames < MIN_FRAMES:
            raise ValueError(f"metrics.fvd.frames={frames}: I3D needs at least {MIN_FRAMES} frames per clip")
        self.path = Path(path).expanduser()
        self.frames = frames
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_i3d(self.path, bn_eps=bn_eps).to(self.device)
        self.sha256 = sha256_file(self.path)
        self.bn_eps = bn_eps

    @property
    def random_weights(self) -> bool:
        return bool(getattr(self.model, "random_weights", False))

    def describe(self) -> dict[str, Any]:
        d = {
            "model": "InceptionI3d Kinetics-400 logits",
            "path": str(self.path),
            "sha256": self.sha256,
            "format": self.model.file_format,
            "frames": self.frames,
            "frame_sampling": "first N consecutive frames; shorter videos are an error",
            "resize": f"{INPUT_SIZE}x{INPUT_SIZE} bilinear, align_corners=False, antialias=False, aspect not kept",
            "value_range": "[-1, 1] (2 * x / 255 - 1)",
            "layout": "(B, 3, T, 224, 224)",
            "random_weights": self.random_weights,
        }
        if self.model.file_format == "state_dict":
            d["bn_eps"] = self.bn_eps
        else:
            d["call"] = ("detector(x, rescale=False, resize=False, return_features=True)"
                         if self.model.stylegan_v_signature else "module(x)")
        if self.random_weights:
            d["note"] = RANDOM_WEIGHTS_NOTE
        return d

    @torch.no_grad()
    def extract(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(batch), self.batch_size):
            clips = []
            for i, video in enumerate(batch[start:start + self.batch_size], start):
                try:
                    clips.append(preprocess_video(np.asarray(video), self.frames))
                except ValueError as e:
                    raise ValueError(f"FVD sample {i}: {e}") from None
            logits = self.model(torch.stack(clips).to(self.device))
            out.append(logits.double().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float64)
        return np.concatenate(out)
