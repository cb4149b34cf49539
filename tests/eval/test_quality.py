"""Sharpness against a direct scipy reference; PSNR / SSIM against torchmetrics' modules."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from eval.metrics.quality import aggregate, psnr, sharpness, ssim


def _rgb(seed: int, shape=(32, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _nchw(x: np.ndarray) -> torch.Tensor:
    x = x[None] if x.ndim == 3 else x
    return torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2).contiguous()


def _scipy_sharpness(img: np.ndarray) -> float:
    gray = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    lap = scipy.ndimage.convolve(gray, kernel, mode="constant")[1:-1, 1:-1]  # valid region only
    return float(lap.var())


def test_sharpness_constant_is_zero():
    assert sharpness(np.full((16, 16, 3), 173, np.uint8)) == pytest.approx(0.0, abs=1e-18)


def test_sharpness_checkerboard_known_value():
    """1-pixel 0/255 checkerboard: the Laplacian is +-4*255 everywhere, mean 0, variance 1020^2."""
    board = ((np.indices((10, 12)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(board[..., None], 3, axis=2)
    assert sharpness(img) == pytest.approx(1020.0 ** 2, rel=1e-12)


def test_sharpness_matches_scipy_and_video_mean():
    imgs = [_rgb(i) for i in range(3)]
    for im in imgs:
        assert sharpness(im) == pytest.approx(_scipy_sharpness(im), rel=1e-12)
    video = np.stack(imgs)
    assert sharpness(video) == pytest.approx(np.mean([_scipy_sharpness(im) for im in imgs]), rel=1e-12)
    blurred = scipy.ndimage.uniform_filter(imgs[0], size=(3, 3, 1))
    assert sharpness(blurred) < sharpness(imgs[0])
    with pytest.raises(ValueError, match=r"\(2, 5, 3\)"):
        sharpness(np.zeros((2, 5, 3), np.uint8))


def test_psnr_matches_torchmetrics():
    from torchmetrics.image import PeakSignalNoiseRatio

    a, b = _rgb(0), _rgb(1)
    tm = PeakSignalNoiseRatio(data_range=255.0)
    assert psnr(a, b) == pytest.approx(float(tm(_nchw(a), _nchw(b))), rel=1e-6)
    # Video: per-frame PSNR averaged (not the PSNR of the pooled MSE).
    va, vb = np.stack([a, b, _rgb(2)]), np.stack([_rgb(3), _rgb(4), _rgb(5)])
    per_frame = [float(PeakSignalNoiseRatio(data_range=255.0)(_nchw(x), _nchw(y))) for x, y in zip(va, vb)]
    assert psnr(va, vb) == pytest.approx(np.mean(per_frame), rel=1e-6)
    assert psnr(a, a) == float("inf")


def test_ssim_matches_torchmetrics():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    a = _rgb(0)
    b = np.clip(a.astype(int) + np.random.default_rng(1).integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    tm = StructuralSimilarityIndexMeasure(data_range=255.0)
    assert ssim(a, b) == pytest.approx(float(tm(_nchw(a), _nchw(b))), rel=1e-6)
    va, vb = np.stack([a, b]), np.stack([b, _rgb(2)])
    tm = StructuralSimilarityIndexMeasure(data_range=255.0)
    assert ssim(va, vb) == pytest.approx(float(tm(_nchw(va), _nchw(vb))), rel=1e-6)  # mean over frames
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(32, 40, 3\).*\(32, 41, 3\)"):
        psnr(_rgb(0), _rgb(1, (32, 41)))
    with pytest.raises(ValueError, match=r"\(2, 32, 40, 3\).*\(32, 40, 3\)"):
        ssim(np.stack([_rgb(0)] * 2), _rgb(1))


def test_aggregate_mean_interval_and_nonfinite():
    res = aggregate("psnr", [20.0, 22.0, 24.0, float("inf")], {"data_range": 255})
    assert res.value == pytest.approx(22.0) and res.n == 3 and res.details["n_nonfinite"] == 1
    assert res.details["data_range"] == 255 and res.warnings
    lo, hi = res.ci95
    assert 20.0 <= lo <= 22.0 <= hi <= 24.0
    assert aggregate("sharpness", [float("nan")]).skipped
