"""FID and KID from saved per-sample features, numerically matching torchmetrics (the network that
produces the features is :mod:`.inception`).

Reference implementations (torchmetrics 1.9):

* ``FrechetInceptionDistance``: features cast to float64, mean and N-1 covariance,
  ``|mu1-mu2|^2 + Tr(S1) + Tr(S2) - 2 sum(sqrt(eigvals(S1 S2)))``, then cast back to the
  module's output dtype (float32 for most extractors, so its value carries ~1e-7 relative
  rounding). We use the same statistics and our Fréchet core (:mod:`.frechet`): equal to ~2e-8.
* ``KernelInceptionDistance``: ``subsets`` times, draw ``subset_size`` rows from each set without
  replacement and compute the unbiased MMD^2 with the polynomial kernel
  ``k(x, y) = (gamma x.y + coef)^degree`` (gamma = 1/D by default); return the mean and the
  population std (``unbiased=False``) over subsets. torchmetrics draws subsets with the global
  torch RNG; ours come from a seeded numpy Generator, so equal numbers are expected only when
  every subset is the whole set (``subset_size`` = N on both sides).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .base import MetricResult, frame_indices, small_sample_warnings
from .bootstrap import DEFAULT_BOOTSTRAP, frechet_interval
from .frechet import frechet_from_features
from .paired import FrechetOf, RowStat
from .spec import Batch, Extractor, Features, MetricInputs, MetricSpec

if TYPE_CHECKING:
    from ..config import EvalConfig

FID_REFERENCE = "torchmetrics FrechetInceptionDistance (float64, cov N-1)"
KID_REFERENCE = "torchmetrics KernelInceptionDistance (unbiased MMD^2, polynomial kernel)"
#: frames per video that FID/KID treat as images (evenly spaced, like CLIP score's)
FRAMES_PER_VIDEO = 8


# --------------------------------------------------------------------------------------------
# Feature sets


def _feature_pair(gen_feats: Any, real_feats: Any) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(gen_feats, dtype=np.float64)
    r = np.asarray(real_feats, dtype=np.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"expected gen_feats [N, D] and real_feats [M, D] with the same D, got gen_feats "
                         f"{np.shape(gen_feats)} and real_feats {np.shape(real_feats)}")
    for name, a in (("gen_feats", g), ("real_feats", r)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} of shape {a.shape} contains NaN or inf")
    return g, r


# --------------------------------------------------------------------------------------------
# FID


def fid(gen_feats: Any, real_feats: Any, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
        details: Optional[dict[str, Any]] = None) -> MetricResult:
    """Fréchet distance between Gaussians fitted to generated and reference features.

    ``ci95`` is a bootstrap over both sets, re-centred on the estimate (see ``bootstrap.centred_interval``);
    the raw percentile interval and the replicates' median are in ``details`` too. Each replicate
    refits both covariances (~20 ms at 2048 x 400), or with fewer samples than dimensions re-centres
    sub-matrices of the Gram matrices (see .gram; ~0.1 s at 1,000 x 2,048) on one CPU core (pass
    ``n_boot=0`` to skip). ``details`` (e.g. the extractor's ``describe()``) is merged over ours.
    """
    g, r = _feature_pair(gen_feats, real_feats)
    n, n_ref, dim = len(g), len(r), g.shape[1]
    out_details: dict[str, Any] = {"reference": FID_REFERENCE, "feature_dim": dim, "covariance": "unbiased (N-1)"}
    warnings = small_sample_warnings("fid", n, dim, n_ref)
    if n < 2 or n_ref < 2:
        out_details.update(details or {})
        return MetricResult(name="fid", value=None, n=n, n_ref=n_ref, details=out_details, warnings=warnings,
                            skipped=f"need at least 2 samples per set, got {n} generated and {n_ref} reference")
    value = frechet_from_features(g, r)
    ci, how = frechet_interval(value, g, r, n_boot=n_boot, seed=seed)
    out_details.update(how)
    out_details.update(details or {})
    return MetricResult(name="fid", value=value, n=n, ci95=ci, n_ref=n_ref, details=out_details,
                        warnings=warnings)


# --------------------------------------------------------------------------------------------
# KID


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef: float) -> np.ndarray:
    return (x @ y.T * gamma + coef) ** degree


def _unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 for two sets of equal size m: self-pairs (the diagonals) are excluded."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


# torchmetrics recomputes the three kernel matrices of every subset: at subset_size=1000,
# subsets=100, D=2048 that is 1.2 TFLOP. When it is cheaper and fits in this many float64 entries
# (128 MB), we compute the full kernel matrices once and read each subset from them by indexing.
# Same values up to rounding.
_MAX_CACHED_KERNEL_ENTRIES = 16 * 1024 * 1024


def _kid_subset_values(g: np.ndarray, r: np.ndarray, subset_size: int, subsets: int, degree: int,
                       gamma: float, coef: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, n_ref = len(g), len(r)
    full_entries = n * n + n_ref * n_ref + n * n_ref
    cached = full_entries <= min(_MAX_CACHED_KERNEL_ENTRIES, 3 * subsets * subset_size ** 2)
    if cached:
        k_gg, k_rr, k_gr = (_poly_kernel(a, b, degree, gamma, coef) for a, b in ((g, g), (r, r), (g, r)))
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        # Same order as torchmetrics: a permutation of the reference set, then of the generated set.
        ir = rng.permutation(n_ref)[:subset_size]
        ig = rng.permutation(n)[:subset_size]
        if cached:
            values[i] = _unbiased_mmd2(k_rr[np.ix_(ir, ir)], k_gg[np.ix_(ig, ig)], k_gr[np.ix_(ig, ir)])
        else:
            fr, fg = r[ir], g[ig]
            values[i] = _unbiased_mmd2(_poly_kernel(fr, fr, degree, gamma, coef),
                                       _poly_kernel(fg, fg, degree, gamma, coef),
                                       _poly_kernel(fg, fr, degree, gamma, coef))
    return values


def kid(gen_feats: Any, real_feats: Any, *, subset_size: int = 1000, subsets: int = 100, degree: int = 3,
        gamma: Optional[float] = None, coef: float = 1.0, seed: int = 0,
        details: Optional[dict[str, Any]] = None) -> MetricResult:
    """Kernel Inception Distance: mean over ``subsets`` of the unbiased polynomial-kernel MMD^2.

    ``subset_size`` is reduced to min(n_gen, n_ref) when larger (torchmetrics raises instead), with
    a warning. ``details["std"]`` is the population std over subsets (torchmetrics' second output).
    ``ci95`` is the 2.5-97.5 percentile range of the per-subset values: how far one estimate from
    ``subset_size`` samples per side moves between draws. It is wider than the uncertainty of the
    mean over (overlapping) subsets, i.e. conservative; it is None when every subset is the whole
    of both sets (nothing varies).
    """
    g, r = _feature_pair(gen_feats, real_feats)
    n, n_ref, dim = len(g), len(r), g.shape[1]
    for name, v in (("subset_size", subset_size), ("subsets", subsets), ("degree", degree)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be None or > 0, got {gamma!r}")
    if not coef > 0:
        raise ValueError(f"coef must be > 0, got {coef!r}")
    gamma_used = 1.0 / dim if gamma is None else float(gamma)

    warnings: list[str] = []
    size = min(int(subset_size), n, n_ref)
    if size < subset_size:
        warnings.append(f"kid: subset_size {subset_size} reduced to {size} = min(n_gen={n}, n_ref={n_ref}); "
                        f"values at different subset sizes are not comparable")
    out_details: dict[str, Any] = {
        "reference": KID_REFERENCE, "feature_dim": dim, "subset_size": size, "subset_size_requested": subset_size,
        "subsets": subsets, "degree": degree, "gamma": gamma_used, "coef": coef, "seed": seed,
        "ci95_method": "2.5-97.5 percentiles of the per-subset values"}
    out_details.update(details or {})
    if size < 2:
        return MetricResult(name="kid", value=None, n=n, n_ref=n_ref, details=out_details, warnings=warnings,
                            skipped=f"need at least 2 samples per set, got {n} generated and {n_ref} reference")

    values = _kid_subset_values(g, r, size, subsets, degree, gamma_used, coef, seed)
    out_details["std"] = float(values.std())  # ddof=0, as torchmetrics' std(unbiased=False)
    whole_sets = size == n == n_ref
    ci = None
    if whole_sets:
        warnings.append("kid: every subset is the whole of both sets, so there is no subset spread: no ci95")
    elif subsets < 2:
        warnings.append("kid: a single subset has no spread: no ci95")
    else:
        lo, hi = np.quantile(values, [0.025, 0.975])
        ci = (float(lo), float(hi))
    mean = float(values.mean())
    return MetricResult(name="kid", value=mean if math.isfinite(mean) else None, n=n, ci95=ci, n_ref=n_ref,
                        details=out_details, warnings=warnings)


# --------------------------------------------------------------------------------------------
# In the metric registry (numpy above; the network is built only when features are extracted)


def _extractor(cfg: EvalConfig, device: str, modality: str) -> Extractor:
    from ..media import MediaError
    from .inception import InceptionExtractor
    f = cfg.metrics.fid
    ex = InceptionExtractor(f.extractor, antialias=f.antialias, device=device,
                            batch_size=max(cfg.metrics.batch_size, 8))

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        # A video contributes FRAMES_PER_VIDEO evenly spaced frames, each an image: [B, k, D].
        frames = [m[frame_indices(m.shape[0], FRAMES_PER_VIDEO)] if m.ndim == 4 else m[None] for _, m, _ in batch]
        k = {len(x) for x in frames}
        if len(k) != 1:
            raise MediaError(f"samples of one batch have different frame counts {sorted(k)}")
        flat = ex.extract([im for x in frames for im in x])
        return {"features": flat.reshape(len(batch), k.pop(), -1)}

    return Extractor({**ex.describe(), "frames_per_video": FRAMES_PER_VIDEO if modality == "video" else 1}, fn)


def _compute(x: MetricInputs) -> dict[str, MetricResult]:
    assert x.reference is not None
    g, r = x.features.arrays["features"], x.reference.arrays["features"]
    g2, r2 = g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1])   # every frame an image
    details = {**x.describe, "n_samples": len(g), "n_reference_samples": len(r)}
    out = {"fid": fid(g2, r2, n_boot=x.n_boot, seed=x.seed, details=details),
           "kid": kid(g2, r2, subset_size=x.settings.fid.kid_subset_size, subsets=x.settings.fid.kid_subsets,
                      seed=x.seed)}
    out["kid"].details.update(details)
    return out


def _unconfigured() -> list[MetricResult]:
    reason = ("no Inception extractor: set metrics.fid.extractor to a TorchScript file (e.g. "
              "inception-2015-12-05.pt from StyleGAN2-ADA / clean-fid)")
    return [MetricResult.skip(name, reason) for name in ("fid", "kid")]


def _paired(feats: Features, ref: Optional[Features], _settings: Any) -> dict[str, RowStat]:
    # A video's frames travel together ([N, k, D]); KID's subset estimator has no paired form here.
    return {} if ref is None else {"fid": FrechetOf(feats.arrays["features"], ref.arrays["features"])}


SPEC = MetricSpec(key="inception", names=("fid", "kid"), features=("features",), extractor=_extractor,
                  compute=_compute, paired=_paired, directions=(("fid", -1), ("kid", -1)), setting="metrics.fid.extractor", unconfigured=_unconfigured,
                  needs_reference=True)
