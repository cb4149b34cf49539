"""Percentile bootstrap intervals with a fixed seed, so an interval is as reproducible as its value."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

DEFAULT_BOOTSTRAP = 200


def bootstrap_ci(stat: Callable[..., float], samples: Sequence[np.ndarray], *, n_boot: int = DEFAULT_BOOTSTRAP,
                 seed: int = 0, level: float = 0.95) -> Optional[tuple[float, float]]:
    """``level`` percentile interval of ``stat(*resampled)``.

    Each array in ``samples`` is resampled along axis 0 independently (with replacement), so a
    two-sample metric (FID: generated vs reference) reflects the uncertainty of both sets.
    Returns None when any set has fewer than 2 rows or ``n_boot`` is 0 (no interval exists).
    Non-finite replicate values are dropped; if more than half are, returns None.
    """
    arrays = [np.asarray(s) for s in samples]
    if n_boot <= 0 or any(len(a) < 2 for a in arrays):
        return None
    values = bootstrap_replicates(stat, arrays, n_boot, seed)
    if len(values) < n_boot / 2:
        return None
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_replicates(stat: Callable[..., float], samples: Sequence[np.ndarray], n_boot: int,
                         seed: int) -> np.ndarray:
    """Finite values of ``stat`` on ``n_boot`` resamples (rows with replacement, each set independently)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        v = float(stat(*[a[rng.integers(0, len(a), len(a))] for a in samples]))
        if np.isfinite(v):
            values.append(v)
    return np.asarray(values, dtype=np.float64)


def centred_interval(value: float, stat: Callable[..., float], samples: Sequence[np.ndarray], *,
                     n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                     replicates: Optional[Callable[[int, int], np.ndarray]] = None
                     ) -> tuple[Optional[tuple[float, float]], dict[str, Any]]:
    """For biased two-sample statistics (FID, FVD): the replicate spread re-centred on the value.

    value + (q2.5 - q50, q97.5 - q50). Why not the plain percentile interval: a Fréchet distance
    is biased upward at finite N, and a resample with replacement holds only ~63% distinct rows,
    so every replicate carries a larger bias than the estimate: on 2048 x 400 Gaussian features
    FID 42.7 had the percentile interval [79, 82], which never covers its own value. Re-centring
    keeps the spread (slightly conservative in simulation) around the reported number. Returns
    the interval and details (raw percentile interval, replicate median, method).
    ``replicates(n_boot, seed)``, when given, computes the same replicates a faster way.
    """
    arrays = [np.asarray(s) for s in samples]
    method = {"ci95_method": f"bootstrap over {'both sets' if len(arrays) > 1 else 'samples'} (n_boot={n_boot}, "
                             f"seed={seed}), 2.5-97.5% replicate spread re-centred on the value"}
    if n_boot <= 0 or any(len(a) < 2 for a in arrays):
        return None, method
    reps = replicates(n_boot, seed) if replicates is not None else bootstrap_replicates(stat, arrays, n_boot, seed)
    if len(reps) < n_boot / 2:
        return None, method
    lo, mid, hi = np.quantile(reps, [0.025, 0.5, 0.975])
    return (float(value + lo - mid), float(value + hi - mid)), {
        **method, "bootstrap_median": float(mid), "ci95_percentile_raw": [float(lo), float(hi)]}


def mean_with_ci(per_sample: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
                 ) -> tuple[float, Optional[tuple[float, float]]]:
    """Mean of per-sample values and its bootstrap interval (for per-video quality metrics)."""
    x = np.asarray(per_sample, dtype=np.float64)
    return float(x.mean()), bootstrap_ci(lambda a: a.mean(), [x], n_boot=n_boot, seed=seed)


def frechet_interval(value: float, a: np.ndarray, b: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP,
                     seed: int = 0) -> tuple[Optional[tuple[float, float]], dict[str, Any]]:
    """:func:`centred_interval` of a Fréchet distance (FID, FVD): with fewer samples than feature
    dimensions the replicates come from Gram matrices (:mod:`.gram`, the same values, ~100x
    faster at 1,000 x 2,048), otherwise from the covariances."""
    from .frechet import frechet_from_features
    from .gram import frechet_replicates, gram_is_faster
    fast = gram_is_faster(a, b)
    ci, how = centred_interval(value, frechet_from_features, [a, b], n_boot=n_boot, seed=seed,
                               replicates=(lambda n, s: frechet_replicates(a, b, n, s)) if fast else None)
    how["ci95_replicates_via"] = "Gram matrices (N < D)" if fast else "covariances"
    return ci, how
