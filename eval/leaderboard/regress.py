"""Regressions: a run against a baseline window of earlier runs of the same bench.

A metric regresses when it moves the wrong way (its spec's direction) by more than its threshold,
relative to the baseline (the median of the window), *and* the baseline lies outside the run's own
95% interval: a move that the run's sampling noise can explain is not flagged, however large.
Throughput (training samples/s) regresses when it drops by more than its threshold; it has no
interval, so the threshold alone decides. Metrics without a direction (sharpness) are not judged.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from pydantic import Field

from training.config import Section

from .store import RunRecord


class RegressionSettings(Section):
    """``regression:`` in a bench config."""

    window: int = Field(7, ge=1, description="earlier runs of the same bench that form the baseline")
    min_runs: int = Field(1, ge=1, description="fewer earlier runs than this: nothing is judged yet")
    metric_threshold: float = Field(0.05, ge=0, description="relative worsening that counts (0.05 = 5%)")
    metric_thresholds: dict[str, float] = Field(default_factory=dict,
                                                description="per-metric thresholds, e.g. {fvd: 0.1}")
    throughput_threshold: float = Field(0.15, ge=0, description="relative drop in training samples/s")
    variants: Optional[list[str]] = Field(None, description="variants to judge (default: every variant)")


def _median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def find_regressions(run: RunRecord, window: list[RunRecord], directions: dict[str, int],
                     settings: RegressionSettings) -> list[dict[str, Any]]:
    """Alerts (key, value, baseline, threshold, message) of ``run`` against ``window``."""
    if len(window) < settings.min_runs:
        return []
    alerts = []
    for v in run.variants:
        if settings.variants is not None and v["name"] not in settings.variants:
            continue
        for name, m in sorted(v["metrics"].items()):
            sign = directions.get(name)
            if not sign or m.get("value") is None:
                continue
            past = [x["metrics"][name]["value"] for r in window for x in r.variants
                    if x["name"] == v["name"] and x["metrics"].get(name, {}).get("value") is not None]
            base = _median(past)
            if base is None:
                continue
            threshold = settings.metric_thresholds.get(name, settings.metric_threshold)
            worse = sign * (base - m["value"])   # > 0: moved the wrong way
            scale = abs(base) if base else 1.0
            ci = m.get("ci95")
            outside = ci is None or not (ci[0] <= base <= ci[1])
            if worse > threshold * scale and outside:
                rel = worse / scale
                alerts.append({
                    "key": f"{v['name']}/{name}", "value": m["value"], "baseline": base, "threshold": threshold,
                    "message": (f"{name} of {v['name']}: {m['value']:.4g} vs baseline {base:.4g} (median of "
                                f"{len(past)} earlier run(s)), {rel:.1%} worse ({'higher' if sign > 0 else 'lower'} "
                                f"is better; threshold {threshold:.0%})"
                                + (f"; baseline outside this run's 95% interval [{ci[0]:.4g}, {ci[1]:.4g}]" if ci
                                   else "; no interval for this value"))})
    sps = run.perf.get("samples_per_s")
    past = [r.perf["samples_per_s"] for r in window if r.perf.get("samples_per_s")]
    base = _median(past)
    if sps and base and (base - sps) > settings.throughput_threshold * base:
        alerts.append({"key": "perf/samples_per_s", "value": sps, "baseline": base,
                       "threshold": settings.throughput_threshold,
                       "message": (f"training throughput {sps:.4g} samples/s vs baseline {base:.4g} (median of "
                                   f"{len(past)} earlier run(s)), {(base - sps) / base:.1%} lower "
                                   f"(threshold {settings.throughput_threshold:.0%})")})
    return alerts


def metric_directions() -> dict[str, int]:
    """+1 / -1 per metric name, from the metric registry (where each metric declares it)."""
    from ..metrics.registry import REGISTRY
    return {name: sign for spec in REGISTRY for name, sign in spec.directions}
