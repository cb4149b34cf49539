"""Percentile bootstrap intervals with a fixed seed, so an interval is as reproducible as its value."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

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
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        resampled = [a[rng.integers(0, len(a), len(a))] for a in arrays]
        v = float(stat(*resampled))
        if np.isfinite(v):
            values.append(v)
    if len(values) < n_boot / 2:
        return None
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mean_with_ci(per_sample: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
                 ) -> tuple[float, Optional[tuple[float, float]]]:
    """Mean of per-sample values and its bootstrap interval (for per-video quality metrics)."""
    x = np.asarray(per_sample, dtype=np.float64)
    return float(x.mean()), bootstrap_ci(lambda a: a.mean(), [x], n_boot=n_boot, seed=seed)
