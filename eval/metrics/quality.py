"""Per-sample quality measures that need no network: sharpness, PSNR, SSIM.

Samples are uint8 RGB arrays, an image (H, W, 3) or a video (F, H, W, 3); for a video a value is
computed per frame and averaged over frames, so every sample contributes one number. ``aggregate``
turns per-sample numbers into a :class:`MetricResult` (mean and bootstrap interval over samples).

* ``sharpness``: variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] (OpenCV's
  ``cv2.Laplacian`` kernel for ksize=1) of the BT.601 luma, in float64 on the 0-255 scale, over the
  *valid* region only. Unlike ``cv2.Laplacian(cv2.cvtColor(img, RGB2GRAY), CV_64F).var()`` we do
  not round the grey image to uint8 and do not reflect-pad the border, so thin images are not
  dominated by padding artefacts; values are therefore close to, not identical with, OpenCV's.
* ``psnr``: torchmetrics ``PeakSignalNoiseRatio(data_range=255)`` on one image: MSE over all
  pixels and channels, 10 log10(255^2 / MSE); re-implemented (two lines) in float64.
* ``ssim``: torchmetrics' functional ``structural_similarity_index_measure`` called directly
  (gaussian kernel 11, sigma 1.5, k1 0.01, k2 0.03, data_range 255, reflect padding then the
  border cropped, mean over channels and pixels), on float64 tensors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .base import MetricResult
from .bootstrap import DEFAULT_BOOTSTRAP, mean_with_ci
from .paired import MeanOf, RowStat
from .spec import Batch, Extractor, Features, MetricInputs, MetricSpec

if TYPE_CHECKING:
    from ..config import EvalConfig

# ITU-R BT.601 luma weights (what PIL "L" and OpenCV RGB2GRAY use).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _as_frames(sample: np.ndarray, arg: str = "sample") -> np.ndarray:
    """(H, W, 3) or (F, H, W, 3) -> float64 (F, H, W, 3), values kept on the 0-255 scale."""
    x = np.asarray(sample)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"{arg}: expected an RGB image (H, W, 3) or video (F, H, W, 3), got shape {np.shape(sample)}")
    return x.astype(np.float64, copy=False)


def _laplacian_valid(gray: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of (..., H, W) on the interior (H-2, W-2): no padding assumptions."""
    c = gray[..., 1:-1, 1:-1]
    return gray[..., :-2, 1:-1] + gray[..., 2:, 1:-1] + gray[..., 1:-1, :-2] + gray[..., 1:-1, 2:] - 4.0 * c


def sharpness(sample: np.ndarray) -> float:
    """Variance of the Laplacian of the luma (higher = sharper); mean over frames for a video."""
    frames = _as_frames(sample)
    if frames.shape[1] < 3 or frames.shape[2] < 3:
        raise ValueError(f"sharpness needs frames of at least 3x3 pixels, got shape {np.shape(sample)}")
    gray = frames @ _LUMA                                # (F, H, W)
    lap = _laplacian_valid(gray).reshape(len(frames), -1)
    return float(lap.var(axis=1).mean())                 # population variance per frame, as OpenCV's meanStdDev


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shape mismatch: a has shape {np.shape(a)}, b has shape {np.shape(b)}")
    return _as_frames(a, "a"), _as_frames(b, "b")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB per frame, averaged over frames; inf for identical frames (as torchmetrics)."""
    fa, fb = _pair(a, b)
    mse = ((fa - fb) ** 2).reshape(len(fa), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        per_frame = 10.0 * np.log10(float(data_range) ** 2 / mse)
    return float(per_frame.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM per frame (torchmetrics' functional implementation), averaged over frames."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    fa, fb = _pair(a, b)
    if fa.shape[1] < 6 or fa.shape[2] < 6:
        # torchmetrics reflect-pads by 5 pixels, which needs a side > 5.
        raise ValueError(f"ssim needs frames of at least 6x6 pixels, got shape {np.shape(a)}")
    ta = torch.from_numpy(np.ascontiguousarray(fa.transpose(0, 3, 1, 2)))
    tb = torch.from_numpy(np.ascontiguousarray(fb.transpose(0, 3, 1, 2)))
    per_frame = structural_similarity_index_measure(ta, tb, data_range=float(data_range), reduction="none")
    return float(per_frame.mean())


def aggregate(name: str, per_sample_values: Any, details: Optional[dict[str, Any]] = None, *,
              n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> MetricResult:
    """Mean over samples with a bootstrap interval.

    Non-finite values (PSNR of an exact copy is inf) cannot be averaged: they are left out, the
    count is recorded in details["n_nonfinite"], and a warning says so; ``n`` is the number used.
    """
    x = np.asarray(per_sample_values, dtype=np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    warnings = []
    out_details = dict(details or {})
    if len(finite) < len(x):
        out_details["n_nonfinite"] = int(len(x) - len(finite))
        warnings.append(f"{name}: {len(x) - len(finite)} of {len(x)} per-sample values are not finite "
                        f"(e.g. PSNR of identical samples) and were left out of the mean")
    if len(finite) == 0:
        return MetricResult(name=name, value=None, n=0, details=out_details, warnings=warnings,
                            skipped="no finite per-sample values")
    value, ci = mean_with_ci(finite, n_boot=n_boot, seed=seed)
    if len(finite) < 2:
        warnings.append(f"{name}: 1 sample, no interval")
    return MetricResult(name=name, value=value if math.isfinite(value) else None, n=len(finite), ci95=ci,
                        details=out_details, warnings=warnings)


# ----------------------------------------------------------------------------- in the metric registry

#: what each per-sample value is; part of the feature cache key (bump ``version`` when one changes)
DEFINITIONS = {"sharpness": "var(Laplacian 3x3) of BT.601 luma, valid region",
               "psnr": "torchmetrics PeakSignalNoiseRatio(data_range=255)",
               "ssim": "torchmetrics SSIM (gaussian 11, sigma 1.5, data_range=255)", "version": 1}


def _paired_reference(path: str, media: np.ndarray) -> np.ndarray:
    """The prompt's paired real media at the sample's size and length (decoded like training data)."""
    from training.data.decode import BadSample

    from ..media import MediaError, decode_like_training
    video = media.ndim == 4
    frames, height, width = (media.shape[:3] if video else (1, *media.shape[:2]))
    try:
        return decode_like_training(Path(path).read_bytes(), "video" if video else "image", width, height, frames)
    except BadSample as e:
        raise MediaError(f"paired reference {path}: {e}") from None


def _values(batch: Batch) -> dict[str, np.ndarray]:
    sharp, ps, ss = [], [], []
    for _, media, rec in batch:
        sharp.append(sharpness(media))
        ref = rec.get("reference") if isinstance(rec, dict) else None
        if ref:
            real = _paired_reference(ref, media)
            ps.append(psnr(media, real))
            ss.append(ssim(media, real))
        else:
            ps.append(np.nan)
            ss.append(np.nan)
    return {"sharpness": np.asarray(sharp), "psnr": np.asarray(ps), "ssim": np.asarray(ss)}


def _extractor(cfg: EvalConfig, device: str, modality: str) -> Extractor:
    return Extractor(dict(DEFINITIONS), _values)


def _compute(x: MetricInputs) -> dict[str, MetricResult]:
    q, out = x.features.arrays, {}
    if x.settings.sharpness:
        out["sharpness"] = aggregate("sharpness", q["sharpness"], {"definition": DEFINITIONS["sharpness"]},
                                     n_boot=x.n_boot, seed=x.seed)
    if np.isfinite(q["psnr"]).any():   # only prompts with a paired reference have one
        for name in ("psnr", "ssim"):
            out[name] = aggregate(name, q[name], {"definition": DEFINITIONS[name], "vs": "paired reference"},
                                  n_boot=x.n_boot, seed=x.seed)
    return out


def _per_sample(feats: Features) -> dict[str, np.ndarray]:
    return {name: feats.arrays[name] for name in ("sharpness", "psnr", "ssim")}


def _paired(feats: Features, _ref: Optional[Features], settings: Any) -> dict[str, RowStat]:
    # aggregate() averages the finite values, as MeanOf does
    names = (("sharpness",) if settings.sharpness else ()) + ("psnr", "ssim")
    return {n: MeanOf(np.asarray(feats.arrays[n], dtype=np.float64)) for n in names}


# Sharpness has no better direction (a LoRA may rightly soften); PSNR/SSIM against paired real media do.
SPEC = MetricSpec(key="quality", names=("sharpness", "psnr", "ssim"), features=("sharpness", "psnr", "ssim"),
                  extractor=_extractor, compute=_compute, per_sample=_per_sample, paired=_paired,
                  directions=(("psnr", 1), ("ssim", 1)))
