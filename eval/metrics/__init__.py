"""Metrics, one module each; every metric returns a :class:`MetricResult` (value, n, interval, warnings).

Features are extracted once per sample and saved, so every number can be recomputed from
``lorabench eval metrics --from DIR`` without regenerating a single sample.
"""

from .base import MetricResult
from .bootstrap import bootstrap_ci

__all__ = ["MetricResult", "bootstrap_ci"]
