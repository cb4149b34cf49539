"""What a metric module declares, once, for the pipeline: a :class:`MetricSpec`.

A spec names the feature extractor (a network loaded from the config, or plain per-sample
arithmetic), the per-sample arrays it saves, how the metric values are computed from a
variant's features (and the reference's, for two-sample metrics) and the names it reports.
:mod:`.registry` lists the specs; :mod:`.pipeline` runs them without naming any metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from .base import MetricResult
from .paired import RowStat

if TYPE_CHECKING:
    from ..config import EvalConfig, MetricsConfig

Batch = list[tuple[str, np.ndarray, Any]]   # (sample id, uint8 media, its record; None for reference media)


@dataclass
class Extractor:
    """A loaded feature extractor: a batch of media -> arrays with one row per sample."""

    describe: dict[str, Any]   # what produces the features (model, sha256, preprocessing): part of the cache key
    fn: Callable[[Batch], dict[str, np.ndarray]]
    #: checks every record before any extraction; returns warnings for the spec's first metric,
    #: raises ConfigError to stop
    precheck: Optional[Callable[[list[dict[str, Any]]], list[str]]] = None


@dataclass
class Features:
    """One extractor's arrays for one group (a variant or the reference), rows in ``ids`` order."""

    ids: list[str]
    arrays: dict[str, np.ndarray]
    skipped: dict[str, list[str]] = field(default_factory=dict)   # reason -> ids


@dataclass
class MetricInputs:
    """Everything a spec's ``compute`` reads, for one variant."""

    features: Features
    reference: Optional[Features]   # the reference set's, for specs with needs_reference (else None)
    describe: dict[str, Any]        # the extractor's describe(), recorded in each result's details
    settings: MetricsConfig         # the ``metrics`` section of the eval config
    modality: str                   # "image" or "video"
    n_boot: int
    seed: int


@dataclass(frozen=True)
class MetricSpec:
    """One feature extractor and the metrics computed from its features."""

    key: str                         # features/<key>/ folder, and the progress bar's label
    names: tuple[str, ...]           # metrics it can report, headline first (prechecks warn on it)
    features: tuple[str, ...]        # the per-sample arrays its extractor yields, one row per sample
    extractor: Callable[[EvalConfig, str, str], Extractor]   # (cfg, device, modality) -> loaded extractor
    compute: Callable[[MetricInputs], dict[str, MetricResult]]
    #: config key of the file it needs (e.g. "metrics.clip.path"); when it is null the spec does
    #: not run and ``unconfigured()`` gives the skips to report. None: it needs no file.
    setting: Optional[str] = None
    unconfigured: Callable[[], list[MetricResult]] = lambda: []
    needs_reference: bool = False    # two-sample metrics: compared with reference.shards features
    modalities: tuple[str, ...] = ("image", "video")
    #: values shown per sample in results.json ``samples[].metrics`` (name -> one value per row)
    per_sample: Optional[Callable[[Features], dict[str, np.ndarray]]] = None
    #: how each metric follows from rows, for paired deltas between variants (:mod:`.paired`):
    #: (variant features, reference features or None, settings) -> name -> MeanOf / FrechetOf.
    #: A metric left out gets the plain difference without interval.
    paired: Optional[Callable[[Features, Optional[Features], MetricsConfig], dict[str, RowStat]]] = None
    #: +1 where higher is better, -1 where lower is; a metric not named has no better direction
    #: (sharpness): regressions (the leaderboard) are only flagged for metrics named here
    directions: tuple[tuple[str, int], ...] = ()

    def configured(self, cfg: EvalConfig) -> Any:
        """The value of ``setting`` in ``cfg`` (True when the spec needs no file)."""
        return True if self.setting is None else reduce(getattr, self.setting.split("."), cfg)
