"""Fréchet Video Distance: Fréchet distance between I3D Kinetics-400 logits of two video sets.

The features follow StyleGAN-V / VideoGPT / TATS (first N frames, 224x224 bilinear, [-1, 1];
each choice and its reference in :mod:`.i3d_extractor`; the network in :mod:`.i3d`). The
distance is ``eval.metrics.frechet`` (float64, N-1 covariance, as torchmetrics' FID;
StyleGAN-V's ``FeatureStats`` normalises by N: the difference is O(1/N), below the bootstrap
interval at the sample counts FVD needs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .base import MetricResult, small_sample_warnings
from .bootstrap import DEFAULT_BOOTSTRAP, frechet_interval
from .frechet import frechet_from_features
from .i3d import NUM_CLASSES, RANDOM_WEIGHTS_NOTE
from .paired import FrechetOf, RowStat
from .spec import Extractor, Features, MetricInputs, MetricSpec

if TYPE_CHECKING:
    from ..config import EvalConfig

CONFIG_KEY = "metrics.fvd.i3d_path"
REFERENCE = ("StyleGAN-V FVD (universome/stylegan-v src/metrics/frechet_video_distance.py) / "
             "VideoGPT-TATS i3d_pretrained_400 logits; first N frames, 224x224 bilinear, [-1, 1]")
WEIGHTS_HELP = (f"FVD needs Kinetics-400 I3D weights, which no package ships: download StyleGAN-V's "
                f"i3d_torchscript.pt (linked from universome/stylegan-v src/metrics/frechet_video_distance.py) "
                f"or VideoGPT's i3d_pretrained_400.pt (wilson1yan/VideoGPT README) and set "
                f"{CONFIG_KEY}=/path/to/file")


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
    ci, how = frechet_interval(value, gen, real, n_boot=n_boot, seed=seed)
    info.update(how)
    return MetricResult(name="fvd", value=value, n=len(gen), ci95=ci, n_ref=len(real), details=info,
                        warnings=warnings)


# ---------------------------------------------------------------------------------------------
# In the metric registry


def _extractor(cfg: EvalConfig, device: str, modality: str) -> Extractor:
    from .i3d_extractor import I3DExtractor
    f = cfg.metrics.fvd
    ex = I3DExtractor(f.i3d_path, frames=f.frames, device=device, batch_size=cfg.metrics.batch_size)
    return Extractor(ex.describe(), lambda batch: {"features": ex.extract([m for _, m, _ in batch])})


def _compute(x: MetricInputs) -> dict[str, MetricResult]:
    assert x.reference is not None
    return {"fvd": fvd(x.features.arrays["features"], x.reference.arrays["features"], n_boot=x.n_boot, seed=x.seed,
                       details=x.describe)}


def _paired(feats: Features, ref: Optional[Features], _settings: Any) -> dict[str, RowStat]:
    return {} if ref is None else {"fvd": FrechetOf(feats.arrays["features"], ref.arrays["features"])}


SPEC = MetricSpec(key="i3d", names=("fvd",), features=("features",), extractor=_extractor, compute=_compute,
                  paired=_paired, directions=(("fvd", -1),), setting=CONFIG_KEY, unconfigured=lambda: [fvd_unavailable(f"{CONFIG_KEY} is not set")],
                  needs_reference=True, modalities=("video",))
