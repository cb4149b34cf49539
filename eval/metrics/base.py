"""The one result type every metric returns, and the small rules metrics share: small-sample
warnings, which frames of a video a per-image metric reads, L2 normalisation of embeddings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class MetricResult:
    """One metric of one variant.

    ``value`` is None only when the metric was skipped (``skipped`` says why, e.g. no I3D
    weights configured). ``n`` is the number of generated samples it used (``n_ref`` the
    reference samples, for two-sample metrics). ``details`` names the model, preprocessing and
    the reference implementation the number matches, so a value is never read without them.
    """

    name: str
    value: Optional[float]
    n: int
    ci95: Optional[tuple[float, float]] = None
    n_ref: Optional[int] = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    skipped: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetricResult":
        d = dict(d)
        if d.get("ci95") is not None:
            d["ci95"] = tuple(d["ci95"])
        return cls(**d)

    @classmethod
    def skip(cls, name: str, reason: str, n: int = 0) -> "MetricResult":
        return cls(name=name, value=None, n=n, skipped=reason)

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.name}: skipped ({self.skipped})"
        ci = f" [{self.ci95[0]:.4g}, {self.ci95[1]:.4g}]" if self.ci95 else ""
        return f"{self.name}={self.value:.4g}{ci} (n={self.n})"


def small_sample_warnings(metric: str, n: int, dim: int, n_ref: Optional[int] = None) -> list[str]:
    """Warnings for a Fréchet-type metric whose covariance cannot be full rank.

    With N samples a D-dimensional covariance has rank <= N-1: below D the distance mixes a
    rank-deficient estimate with a strong small-sample bias (field notes: FVD over 3 videos).
    """
    out = []
    for who, k in (("generated", n), ("reference", n_ref)):
        if k is None:
            continue
        if k < 2:
            out.append(f"{metric}: {k} {who} sample(s); a covariance needs at least 2: the value is meaningless")
        elif k <= dim:
            out.append(f"{metric}: {k} {who} samples <= feature dimension {dim}: the covariance has rank <= {k - 1}, "
                       f"the value is biased and not comparable with published numbers (use > {dim}, ideally "
                       f"thousands)")
    return out


def frame_indices(num_frames: int, k: int = 8) -> np.ndarray:
    """``k`` evenly spaced frame indices, ``np.linspace(0, F-1, k).round()``; all frames when F <= k.

    (numpy rounds halves to even.) CLIP score and FID read a video's frames this way.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if k < 1:
        raise ValueError(f"frames per video must be >= 1, got {k}")
    if num_frames <= k:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, k).round().astype(np.int64)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
