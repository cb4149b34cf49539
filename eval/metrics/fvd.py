"""Fréchet Video Distance: Fréchet distance between I3D Kinetics-400 logits of two video sets.

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
* **Distance**: ``eval.metrics.frechet`` (float64, N-1 covariance, as torchmetrics' FID;
  StyleGAN-V's ``FeatureStats`` normalises by N: the difference is O(1/N), below the bootstrap
  interval at the sample counts FVD needs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoint import sha256_file

from .base import MetricResult, small_sample_warnings
from .bootstrap import DEFAULT_BOOTSTRAP, centred_interval
from .frechet import frechet_from_features
from .i3d import DEFAULT_BN_EPS, INPUT_SIZE, MIN_FRAMES, NUM_CLASSES, RANDOM_WEIGHTS_NOTE, load_i3d

DEFAULT_FRAMES = 16
CONFIG_KEY = "metrics.fvd.i3d_path"
REFERENCE = ("StyleGAN-V FVD (universome/stylegan-v src/metrics/frechet_video_distance.py) / "
             "VideoGPT-TATS i3d_pretrained_400 logits; first N frames, 224x224 bilinear, [-1, 1]")
WEIGHTS_HELP = (f"FVD needs Kinetics-400 I3D weights, which no package ships: download StyleGAN-V's "
                f"i3d_torchscript.pt (linked from universome/stylegan-v src/metrics/frechet_video_distance.py) "
                f"or VideoGPT's i3d_pretrained_400.pt (wilson1yan/VideoGPT README) and set "
                f"{CONFIG_KEY}=/path/to/file")


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


def fvd_unavailable(reason: Optional[str] = None, n: int = 0) -> MetricResult:
    """A skipped FVD result that says where to get weights and which config key to set."""
    msg = f"{reason}. {WEIGHTS_HELP}" if reason else WEIGHTS_HELP
    return MetricResult.skip("fvd", msg, n=n)


def fvd(gen_feats: np.ndarray, real_feats: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
        details: Optional[dict[str, Any]] = None) -> MetricResult:
    """FVD between generated and reference I3D features ([N, 400] each).

    ``ci95`` is a percentile bootstrap resampling both sets; ``details`` (e.g. the extractor's
    ``describe()``) is recorded with the number, plus N, feature dimension and the reference.
    """
    gen = np.asarray(gen_feats, dtype=np.float64)
    real = np.asarray(real_feats, dtype=np.float64)
    for who, x in (("generated", gen), ("reference", real)):
        if x.ndim != 2 or x.shape[1] != NUM_CLASSES:
            raise ValueError(f"FVD {who} features: expected [N, {NUM_CLASSES}] I3D logits, got shape {x.shape}")
    info = {"reference": REFERENCE, "n_generated": len(gen), "n_reference": len(real), "feature_dim": NUM_CLASSES,
            "covariance": "unbiased (N-1)", **(details or {})}
    warnings = small_sample_warnings("fvd", len(gen), NUM_CLASSES, len(real))
    if info.get("random_weights"):
        warnings.append("fvd: " + RANDOM_WEIGHTS_NOTE)
    if len(gen) < 2 or len(real) < 2:
        result = MetricResult.skip("fvd", f"needs >= 2 generated and >= 2 reference videos, got {len(gen)} and "
                                          f"{len(real)}", n=len(gen))
        result.n_ref, result.details, result.warnings = len(real), info, warnings
        return result
    value = frechet_from_features(gen, real)
    # Re-centred: plain percentile intervals of a biased distance miss the value itself.
    ci, how = centred_interval(value, frechet_from_features, [gen, real], n_boot=n_boot, seed=seed)
    info.update(how)
    return MetricResult(name="fvd", value=value, n=len(gen), ci95=ci, n_ref=len(real), details=info,
                        warnings=warnings)
