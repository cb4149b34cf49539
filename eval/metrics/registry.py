"""The metric registry: every :class:`~.spec.MetricSpec`, in report order.

A new metric is a module that declares a ``SPEC`` and one line here; the pipeline
(:mod:`.pipeline`) and the results (:mod:`eval.results`) need no change.
"""

from __future__ import annotations

from . import clip, fid, fvd, quality
from .spec import MetricSpec

REGISTRY: tuple[MetricSpec, ...] = (clip.SPEC, fvd.SPEC, fid.SPEC, quality.SPEC)
