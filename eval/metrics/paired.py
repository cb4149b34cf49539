"""Paired differences between two variants, with a bootstrap interval over prompts.

Every variant of an eval is sampled on the same prompts with the same seeds, so the honest
question "did the LoRA change the metric?" is about the difference on those pairs, not about two
independent intervals that overlap. A replicate draws prompts with replacement (every sample of
a drawn prompt, all its seeds, comes with it, in both variants alike) and, for two-sample
metrics, one draw of the reference rows shared by both variants; the replicate's delta is
metric(variant rows) - metric(other rows). Sampling noise common to both variants (a hard
prompt, an unlucky reference draw) cancels in the difference, which is why a paired interval is
far narrower than the two marginal ones.

A metric takes part when its spec declares how it is computed from rows (:class:`MeanOf`,
:class:`FrechetOf`); others (KID's subset estimator) get the plain difference without interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from .gram import GramFrechet


@dataclass(frozen=True)
class MeanOf:
    """A metric that is ``scale * mean`` of per-sample values (non-finite values left out),
    floored at ``floor`` when given (CLIP score is 100 * max(mean cosine, 0))."""

    values: np.ndarray
    scale: float = 1.0
    floor: Optional[float] = None

    def value(self, rows: np.ndarray, _ref: Optional[np.ndarray] = None) -> float:
        x = self.values[rows]
        x = x[np.isfinite(x)]
        if not len(x):
            return float("nan")
        m = self.scale * float(x.mean())
        return m if self.floor is None else max(m, self.floor)


@dataclass(frozen=True)
class FrechetOf:
    """A Fréchet distance (FID, FVD) between a variant's feature rows and the reference's.

    ``features`` is [N, D] or [N, k, D] (a video contributing k frames to FID): a drawn sample
    brings all its k rows, and so does a drawn reference sample."""

    features: np.ndarray
    reference: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "_gram", None)

    def _flat(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, x.shape[-1])

    def _expand(self, idx: np.ndarray, per: int) -> np.ndarray:
        return (np.asarray(idx)[:, None] * per + np.arange(per)[None, :]).reshape(-1)

    def value(self, rows: np.ndarray, ref: Optional[np.ndarray] = None) -> float:
        if self._gram is None:  # built once per (variant, reference) and reused by every replicate
            object.__setattr__(self, "_gram", GramFrechet(self._flat(self.features), self._flat(self.reference)))
        ka = 1 if self.features.ndim == 2 else self.features.shape[1]
        kb = 1 if self.reference.ndim == 2 else self.reference.shape[1]
        ref = np.arange(len(self.reference)) if ref is None else ref
        return float(self._gram.distance(self._expand(rows, ka), self._expand(ref, kb)))


RowStat = Union[MeanOf, FrechetOf]


@dataclass
class PairedDelta:
    """metric(a) - metric(b) on the samples both have, with its paired 95% interval."""

    value: Optional[float]
    ci95: Optional[tuple[float, float]]
    n: int                 # samples present in both variants
    n_prompts: int         # the units the bootstrap resamples
    method: str

    @property
    def significant(self) -> Optional[bool]:
        """True when the interval excludes 0; None when there is no interval."""
        if self.ci95 is None:
            return None
        return not (self.ci95[0] <= 0.0 <= self.ci95[1])

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": list(self.ci95) if self.ci95 else None, "significant": self.significant,
                "n": self.n, "n_prompts": self.n_prompts, "method": self.method}


def delta_text(d: dict[str, Any], digits: int = 3) -> str:
    """A paired delta as ``+1.5 [-0.25, +3] n.s.`` (n.s.: its interval contains 0); shared by
    results.md, ``lorabench leaderboard show`` and the bench summary."""
    if d.get("value") is None:
        return "-"
    s = f"{d['value']:+.{digits}g}"
    if d.get("ci95"):
        s += f" [{d['ci95'][0]:+.{digits}g}, {d['ci95'][1]:+.{digits}g}]" + ("" if d["significant"] else " n.s.")
    return s


def aligned_rows(ids_a: list[str], ids_b: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The sample ids both variants have (in ``ids_a`` order) and their row numbers in each."""
    where_b = {i: k for k, i in enumerate(ids_b)}
    common = [i for i in ids_a if i in where_b]
    where_a = {i: k for k, i in enumerate(ids_a)}
    return common, np.asarray([where_a[i] for i in common], dtype=np.int64), \
        np.asarray([where_b[i] for i in common], dtype=np.int64)


def prompt_clusters(common: list[str], prompt_of: Callable[[str], str]) -> list[np.ndarray]:
    """Positions in ``common`` grouped by prompt, in first-seen order: the bootstrap's units."""
    groups: dict[str, list[int]] = {}
    for pos, sid in enumerate(common):
        groups.setdefault(prompt_of(sid), []).append(pos)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]


def paired_delta(a: RowStat, b: RowStat, rows_a: np.ndarray, rows_b: np.ndarray, clusters: list[np.ndarray], *,
                 n_boot: int, seed: int, level: float = 0.95) -> PairedDelta:
    """metric(a) - metric(b) over matched rows (``rows_a[i]`` and ``rows_b[i]`` are one prompt and
    seed), with a bootstrap over ``clusters`` (lists of positions into the matched rows).

    The draws, in order, per replicate: ``rng.integers(0, n_clusters, n_clusters)`` then, for a
    Fréchet metric, ``rng.integers(0, n_ref, n_ref)`` for the shared reference rows. A Fréchet
    delta's interval is the replicate spread re-centred on the delta (as the metric's own
    interval, :func:`~.bootstrap.centred_interval`); a mean's is the plain percentile interval.
    """
    n = len(rows_a)
    frechet = isinstance(a, FrechetOf)
    method = (f"paired bootstrap over {len(clusters)} prompts (all seeds of a drawn prompt, both variants"
              + (", one shared reference draw" if frechet else "") + f"; n_boot={n_boot}, seed={seed})")
    if n == 0:
        return PairedDelta(None, None, 0, 0, method)
    value = a.value(rows_a) - b.value(rows_b)
    if not np.isfinite(value):
        return PairedDelta(None, None, n, len(clusters), method)
    if n_boot <= 0 or len(clusters) < 2:
        return PairedDelta(float(value), None, n, len(clusters), method + "; too few prompts for an interval")
    rng = np.random.default_rng(seed)
    n_ref = len(a.reference) if isinstance(a, FrechetOf) else 0
    reps = []
    for _ in range(n_boot):
        pos = np.concatenate([clusters[c] for c in rng.integers(0, len(clusters), len(clusters))])
        ref = rng.integers(0, n_ref, n_ref) if frechet else None
        d = a.value(rows_a[pos], ref) - b.value(rows_b[pos], ref)
        if np.isfinite(d):
            reps.append(d)
    if len(reps) < n_boot / 2:
        return PairedDelta(float(value), None, n, len(clusters), method + "; most replicates were not finite")
    alpha = (1.0 - level) / 2
    lo, mid, hi = np.quantile(np.asarray(reps), [alpha, 0.5, 1.0 - alpha])
    if frechet:
        lo, hi = value + lo - mid, value + hi - mid
        method += ", 2.5-97.5% spread re-centred on the delta"
    return PairedDelta(float(value), (float(lo), float(hi)), n, len(clusters), method)
