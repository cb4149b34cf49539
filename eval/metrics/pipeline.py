"""From saved samples to numbers: every registered metric of every variant.

For each metric spec in :mod:`.registry` that the config enables, its extractor's per-sample
features for each variant (and for the reference set, for two-sample metrics), cached on disk
(:mod:`.features`), then its values per variant. Nothing here names a metric: a metric is
added by declaring its spec (:mod:`.spec`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from training.config import ConfigError
from training.fsio import sha256_file, sha256_json

from ..config import EvalConfig
from ..manifest import EvalLayout
from ..media import MediaError, read_media, reference_media
from ..variants import BASE, Variant
from . import registry
from .base import MetricResult
from .features import run_stage
from .paired import RowStat, aligned_rows, paired_delta, prompt_clusters
from .spec import Extractor, Features, MetricInputs, MetricSpec

log = logging.getLogger("lorabench.eval")

REFERENCE_GROUP = "reference"
NO_REFERENCE = "no real statistics: set reference.shards to held-out webdataset shards"

Stage = tuple[MetricSpec, Extractor]


@dataclass
class EvalMetrics:
    """What the metrics stage hands to the results: every metric of every variant."""

    variants: dict[str, dict[str, MetricResult]] = field(default_factory=dict)   # variant -> name -> result
    reference: Optional[dict[str, Any]] = None    # the real set two-sample metrics used: shards, n, skipped
    per_sample: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # variant -> sample -> values
    #: variant -> "vs_base" / "vs_previous" -> {"against": name, "metrics": name -> PairedDelta.to_dict()}
    deltas: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def check_inputs(cfg: EvalConfig) -> None:
    """Fail before generation (not hours later) on metric files or reference shards that do not exist."""
    if not cfg.metrics.enabled:
        return
    for spec in registry.REGISTRY:
        path = spec.setting and spec.configured(cfg)
        if path and not Path(path).exists():
            raise ConfigError(f"{spec.setting}: {path} does not exist (set it to a local file/folder, or to null to "
                              "skip the metrics that need it)")
    if cfg.reference.shards:
        _reference_urls(cfg)


def _reference_urls(cfg: EvalConfig) -> list[str]:
    from training.data.shards import list_shards
    try:
        return list_shards(cfg.reference.shards)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"reference.shards: {e}") from None


def build_stages(cfg: EvalConfig, modality: str) -> tuple[list[Stage], dict[str, MetricResult]]:
    """The configured extractors, loaded, and a skip result for each metric that cannot run.

    Model paths must exist (:func:`check_inputs`)."""
    from training.runtime import resolve_device
    device = str(resolve_device(cfg.metrics.device))
    stages: list[Stage] = []
    skips: dict[str, MetricResult] = {}
    for spec in registry.REGISTRY:
        if modality not in spec.modalities:
            continue
        if not spec.configured(cfg):
            skips.update((r.name, r) for r in spec.unconfigured())
            continue
        stages.append((spec, spec.extractor(cfg, device, modality)))
    return stages, skips


def compute_metrics(cfg: EvalConfig, layout: EvalLayout, modality: str, variants: list[Variant],
                    records: list[dict[str, Any]], progress: bool = True) -> EvalMetrics:
    """Every metric of every variant, from the samples in ``records``."""
    check_inputs(cfg)  # again: `eval metrics --from DIR` may name new files, or files may have moved
    stages, skips = build_stages(cfg, modality)
    # Prechecks see every record before any extraction; their warnings go to the spec's headline metric.
    notes = {spec.names[0]: ex.precheck(records) for spec, ex in stages if ex.precheck}
    out = EvalMetrics()
    two_sample = [(spec, ex) for spec, ex in stages if spec.needs_reference]
    reference: dict[str, Features] = {}
    if two_sample and cfg.reference.shards:
        reference, out.reference = _reference_features(cfg, layout, modality, two_sample, progress)
    elif two_sample:
        skips.update((name, MetricResult.skip(name, NO_REFERENCE)) for spec, _ in two_sample for name in spec.names)
    kept: dict[str, dict[str, Features]] = {}
    for v in variants:
        recs = [r for r in records if r["variant"] == v.name]
        feats = kept[v.name] = {spec.key: _variant_features(spec, ex, layout, v.name, recs, cfg.metrics.batch_size, progress)
                 for spec, ex in stages}
        results = {k: MetricResult.from_dict(r.to_dict()) for k, r in skips.items()}  # own copies per variant
        results.update(_variant_metrics(stages, feats, reference, cfg, modality))
        for name, warnings in notes.items():
            if name in results:
                results[name].warnings.extend(warnings)
        unreadable = sorted({i for f in feats.values() for ids in f.skipped.values() for i in ids})
        if unreadable:
            for r in results.values():
                r.warnings.append(f"{len(unreadable)} sample(s) unreadable and left out: {', '.join(unreadable[:5])}")
        out.variants[v.name] = results
        out.per_sample[v.name] = _per_sample(stages, feats)
    prompt_of = {r["sample_id"]: r.get("prompt_id", r["sample_id"]) for r in records}
    # One set of row statistics per variant and spec, shared by every comparison it is in (a
    # checkpoint is compared with base and with the one before; base with every variant): a
    # FrechetOf keeps its Gram matrices, so each is built once.
    row_stats: dict[tuple[str, str], dict[str, RowStat]] = {}

    def stats(variant: str, spec: MetricSpec) -> dict[str, RowStat]:
        key = (variant, spec.key)
        if key not in row_stats:
            f = kept[variant][spec.key]
            row_stats[key] = spec.paired(f, reference.get(spec.key), cfg.metrics) if spec.paired and f.ids else {}
        return row_stats[key]

    for name, kind, against in comparisons(variants):
        out.deltas.setdefault(name, {})[kind] = {"against": against, "metrics": _paired_deltas(
            stages, name, against, kept, reference, out.variants, stats, prompt_of, cfg)}
    return out


def comparisons(variants: list[Variant]) -> list[tuple[str, str, str]]:
    """(variant, "vs_base" | "vs_previous", the variant it is compared with): every adapter
    variant against base, and each checkpoint against the one before it (same run, same scale)."""
    out = []
    names = {v.name for v in variants}
    previous: dict[tuple[Optional[str], Optional[float]], str] = {}
    for v in variants:
        if v.adapter is None:
            continue
        if BASE in names:
            out.append((v.name, "vs_base", BASE))
        if v.step is not None:
            key = (v.group, v.scale)
            if key in previous:
                out.append((v.name, "vs_previous", previous[key]))
            previous[key] = v.name
    return out


def _paired_deltas(stages: list[Stage], va: str, vb: str, feats: dict[str, dict[str, Features]],
                   reference: dict[str, Features], results: dict[str, dict[str, MetricResult]],
                   stats: Callable[[str, MetricSpec], dict[str, RowStat]], prompt_of: dict[str, str],
                   cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Paired deltas (variant ``va`` - variant ``vb``) of every metric both have a value for."""
    out: dict[str, dict[str, Any]] = {}
    ra, rb = results[va], results[vb]
    for spec, _ in stages:
        a, b = feats[va][spec.key], feats[vb][spec.key]
        if spec.needs_reference and reference.get(spec.key) is None:
            continue
        common, rows_a, rows_b = aligned_rows(a.ids, b.ids)
        clusters = prompt_clusters(common, lambda sid: prompt_of.get(sid, sid))
        stats_a, stats_b = (stats(va, spec), stats(vb, spec)) if common else ({}, {})
        for name in spec.names:
            if name not in ra or name not in rb or ra[name].value is None or rb[name].value is None:
                continue
            if name in stats_a:
                out[name] = paired_delta(stats_a[name], stats_b[name], rows_a, rows_b, clusters,
                                         n_boot=cfg.metrics.bootstrap, seed=cfg.seed).to_dict()
            else:
                out[name] = {"value": ra[name].value - rb[name].value, "ci95": None, "significant": None,
                             "n": len(common), "n_prompts": len(clusters),
                             "method": f"difference of the values; {name} has no paired interval"}
    return out


def _variant_features(spec: MetricSpec, ex: Extractor, layout: EvalLayout, variant: str, recs: list[dict[str, Any]],
                      batch_size: int, progress: bool) -> Features:
    # The files as they are now, not as recorded: a replaced or damaged sample invalidates the cache.
    source = sha256_json([(r["sample_id"], _file_digest(layout.root / r["path"]), r.get("prompt"),
                           r.get("reference")) for r in recs])

    def items() -> Iterator[tuple[str, Optional[np.ndarray], Any]]:
        for r in recs:
            try:
                yield r["sample_id"], read_media(layout.root / r["path"]), r
            except MediaError as e:
                log.warning("%s/%s: %s (left out of the metrics)", variant, r["sample_id"], e)
                yield r["sample_id"], None, "unreadable"

    return run_stage(spec.key, ex, spec.features, layout, variant, source, items, batch_size, len(recs), progress)


def _file_digest(path: Path) -> Optional[str]:
    return sha256_file(path) if path.is_file() else None


def _reference_features(cfg: EvalConfig, layout: EvalLayout, modality: str, stages: list[Stage],
                        progress: bool) -> tuple[dict[str, Features], dict[str, Any]]:
    r, s = cfg.reference, cfg.sampling
    urls = _reference_urls(cfg)
    # Real clips are read at the rate the samples are written at (sampling.fps), so FVD compares
    # motion at one speed; the rate is part of the feature cache key.
    fps = s.fps if modality == "video" else None
    source = sha256_json({"shards": urls, "max": r.max_samples, "size": [s.width, s.height, s.frames], "fps": fps})

    def items() -> Iterator[tuple[str, Optional[np.ndarray], Any]]:
        return reference_media(urls, modality, s.width, s.height, s.frames, r.max_samples, fps)

    feats = {spec.key: run_stage(spec.key, ex, spec.features, layout, REFERENCE_GROUP, source, items,
                                 cfg.metrics.batch_size, r.max_samples, progress) for spec, ex in stages}
    first = next(iter(feats.values()))
    n_bad = sum(len(v) for v in first.skipped.values())
    seen = len(first.ids) + n_bad
    reasons = ", ".join(f"{k}={len(v)}" for k, v in first.skipped.items())
    if not first.ids:
        raise ConfigError(f"reference.shards {r.shards}: no usable reference sample among {seen} "
                          f"({reasons or 'the shards are empty'}); FVD/FID need real media at least "
                          f"{s.width}x{s.height}" + (f" with {s.frames} frames" if modality == "video" else ""))
    if seen and n_bad / seen > r.max_bad_fraction:
        raise ConfigError(f"reference.shards: {n_bad} of {seen} reference samples unreadable ({reasons}), over "
                          f"reference.max_bad_fraction={r.max_bad_fraction}")
    info = {"shards": r.shards, "n": len(first.ids),
            "skipped": f"skipped {n_bad} of {seen}" + (f": {reasons}" if reasons else "")}
    return feats, info


def _variant_metrics(stages: list[Stage], feats: dict[str, Features], reference: dict[str, Features],
                     cfg: EvalConfig, modality: str) -> dict[str, MetricResult]:
    out: dict[str, MetricResult] = {}
    for spec, ex in stages:
        f, ref = feats[spec.key], reference.get(spec.key)
        # A two-sample metric runs whenever the reference does (it reports too few samples
        # itself); a one-sample metric needs at least one sample.
        if (ref is None) if spec.needs_reference else not f.ids:
            continue
        out.update(spec.compute(MetricInputs(f, ref, ex.describe, cfg.metrics, modality, cfg.metrics.bootstrap,
                                             cfg.seed)))
    for m in out.values():  # a number from a random network must say so wherever it is shown
        if m.details.get("random_weights") and not any("random" in w for w in m.warnings):
            m.warnings.append(f"{m.name}: computed with random network weights (a test/demo model): meaningless")
    return out


def _per_sample(stages: list[Stage], feats: dict[str, Features]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for spec, _ in stages:
        f = feats[spec.key]
        if spec.per_sample is None or not f.ids:
            continue
        for name, values in spec.per_sample(f).items():
            for i, v in zip(f.ids, values):
                if v is not None and np.isfinite(v):
                    rows.setdefault(i, {})[name] = float(v)
    return rows
