"""Metrics, one module each; every metric returns a :class:`MetricResult` (value, n, interval, warnings).

Each metric module (``clip``, ``fvd``, ``fid``, ``quality``) declares a ``SPEC`` (:mod:`.spec`):
its feature extractor, the per-sample arrays it saves, how its values are computed and the
names it reports; :mod:`.registry` lists them and :mod:`.pipeline` runs them. The networks
live apart from the math: ``clip_model`` (CLIP), ``i3d`` + ``i3d_extractor`` (FVD),
``inception`` (FID/KID).

Features are extracted once per sample and saved, so every number can be recomputed from
``lorabench eval metrics --from DIR`` without regenerating a single sample.
"""

from .base import MetricResult
from .bootstrap import bootstrap_ci

__all__ = ["MetricResult", "bootstrap_ci"]
