"""From saved samples to numbers: per-sample features (cached on disk), then every metric per variant.

Features are written to ``features/<extractor>/<group>.safetensors`` (group: a variant or
``reference``) with the sample ids, the media sha256s and the extractor's description in the
metadata. A cache is reused only when all three match, so ``lorabench eval metrics --from DIR``
recomputes numbers (other bootstrap count, KID subsets...) without touching a network, and a
changed sample or model invalidates exactly what it must.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from training.config import ConfigError
from training.console import progress as progress_bar

from ..config import EvalConfig
from ..manifest import EvalLayout, stable_hash
from ..media import MediaError, decode_like_training, read_media, reference_media
from .base import MetricResult

log = logging.getLogger("lorabench.eval")

REFERENCE_GROUP = "reference"
#: frames per video that FID/KID treat as images (evenly spaced, like CLIP score's)
FID_FRAMES_PER_VIDEO = 8

Batch = list[tuple[str, np.ndarray, dict[str, Any]]]   # (id, media, record or {})


@dataclass
class Stage:
    """One cached per-sample computation: a batch of media -> arrays with one row per sample."""

    key: str
    describe: dict[str, Any]
    fn: Callable[[Batch], dict[str, np.ndarray]]
    needs_reference: bool = False
    #: checks the records before any extraction; returns warnings, raises ConfigError to stop
    precheck: Optional[Callable[[list[dict[str, Any]]], list[str]]] = None


@dataclass
class Features:
    ids: list[str]
    arrays: dict[str, np.ndarray]
    skipped: dict[str, list[str]] = field(default_factory=dict)   # reason -> ids


# ----------------------------------------------------------------------------- cache


def _load_cache(path: Path, meta: dict[str, str]) -> Optional[Features]:
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        stored = f.metadata() or {}
    if any(stored.get(k) != v for k, v in meta.items()):
        return None
    arrays = {k: v.numpy() for k, v in load_file(str(path)).items()}
    return Features(json.loads(stored["ids"]), arrays, json.loads(stored.get("skipped", "{}")))


def _save_cache(path: Path, meta: dict[str, str], feats: Features) -> None:
    import os

    import torch
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.arrays.items()}
    save_file(tensors, str(tmp), metadata={**meta, "ids": json.dumps(feats.ids),
                                           "skipped": json.dumps(feats.skipped)})
    os.replace(tmp, path)


def run_stage(stage: Stage, layout: EvalLayout, group: str, source_key: str,
              items: Callable[[], Iterator[tuple[str, Optional[np.ndarray], Any]]], batch_size: int,
              total: Optional[int], progress: bool) -> Features:
    """The stage's features for ``group``: from the cache when valid, else computed and saved.

    ``items`` yields (id, media or None, record or skip reason); ``source_key`` identifies the
    inputs (ids + media sha256s, or the reference shard list).
    """
    path = layout.features(stage.key, group)
    meta = {"source": source_key, "extractor": stable_hash(stage.describe)}
    cached = _load_cache(path, meta)
    if cached is not None:
        return cached
    ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {}
    skipped: dict[str, list[str]] = {}
    batch: Batch = []

    def flush() -> None:
        if not batch:
            return
        out = stage.fn(batch)
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
        ids.extend(i for i, _, _ in batch)
        batch.clear()

    bar = progress_bar(total=total, desc=f"{stage.key}:{group}", unit="sample", disable=not progress, leave=False)
    for sid, media, extra in items():
        bar.update(1)
        if media is None:
            skipped.setdefault(str(extra), []).append(sid)
            continue
        batch.append((sid, media, extra))
        if len(batch) >= batch_size:
            flush()
    flush()
    bar.close()
    feats = Features(ids, {k: np.concatenate(v) for k, v in parts.items()}, skipped)
    _save_cache(path, meta, feats)
    return feats


# ----------------------------------------------------------------------------- stages


def build_stages(cfg: EvalConfig, modality: str) -> tuple[list[Stage], dict[str, MetricResult]]:
    """The configured extractors as stages, and a skip result for each metric that cannot run.

    Model paths must exist (:func:`check_inputs`)."""
    from training.runtime import resolve_device
    device = str(resolve_device(cfg.metrics.device))
    m, stages, skips = cfg.metrics, [], {}
    if m.clip.path:
        stages.append(_clip_stage(cfg, device, modality))
    else:
        skips["clip_score"] = MetricResult.skip("clip_score", "no CLIP model: set metrics.clip.path to a local "
                                                "CLIP folder (e.g. openai/clip-vit-large-patch14)")
    if modality == "video":
        if m.fvd.i3d_path:
            stages.append(_i3d_stage(cfg, device))
        else:
            from .fvd import fvd_unavailable
            skips["fvd"] = fvd_unavailable("metrics.fvd.i3d_path is not set")
    if m.fid.extractor:
        stages.append(_inception_stage(cfg, device, modality))
    else:
        for name in ("fid", "kid"):
            skips[name] = MetricResult.skip(name, "no Inception extractor: set metrics.fid.extractor to a TorchScript "
                                            "file (e.g. inception-2015-12-05.pt from StyleGAN2-ADA / clean-fid)")
    stages.append(_quality_stage())
    return stages, skips


def check_inputs(cfg: EvalConfig) -> None:
    """Fail before generation (not hours later) on metric files or reference shards that do not exist."""
    if not cfg.metrics.enabled:
        return
    m = cfg.metrics
    for key, path in (("metrics.clip.path", m.clip.path), ("metrics.fvd.i3d_path", m.fvd.i3d_path),
                      ("metrics.fid.extractor", m.fid.extractor)):
        if path and not Path(path).exists():
            raise ConfigError(f"{key}: {path} does not exist (set it to a local file/folder, or to null to skip "
                              "the metrics that need it)")
    if cfg.reference.shards:
        from training.data.shards import list_shards
        try:
            list_shards(cfg.reference.shards)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"reference.shards: {e}") from None


def _clip_stage(cfg: EvalConfig, device: str, modality: str) -> Stage:
    from .clip import ClipModel, temporal_consistency
    c = cfg.metrics.clip
    model = ClipModel(c.path, device=device, batch_size=max(cfg.metrics.batch_size, 8),
                      truncate=c.truncate, frames=c.frames)

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        img, txt, tc = [], [], []
        for _, media, rec in batch:
            f = model.sample_features(media, rec["prompt"], all_frames=modality == "video")
            img.append(f["image_emb"])
            txt.append(f["text_emb"])
            tc.append(temporal_consistency(f["frame_emb"]) if "frame_emb" in f else np.nan)
        return {"image_emb": np.stack(img), "text_emb": np.stack(txt), "temporal": np.asarray(tc, np.float64)}

    def precheck(records: list[dict[str, Any]]) -> list[str]:
        # All prompts at once, before minutes of extraction: CLIP's text encoder has 77 positions.
        prompts = sorted({(r["prompt_id"], r["prompt"]) for r in records})
        counts = model.token_counts([p for _, p in prompts])
        over = [(pid, n) for (pid, _), n in zip(prompts, counts) if n > model.max_tokens]
        if over and not c.truncate:
            raise ConfigError(f"{len(over)} prompt(s) exceed CLIP's {model.max_tokens}-token limit for CLIP score "
                              f"(first: {over[0][0]!r}, {over[0][1]} tokens); shorten them or set "
                              "metrics.clip.truncate=true (truncated prompts are counted in the results)")
        return [f"clip_score: {len(over)} prompt(s) truncated to {model.max_tokens} CLIP tokens: "
                + ", ".join(pid for pid, _ in over[:10])] if over else []

    return Stage("clip", model.describe(), fn, precheck=precheck)


def _i3d_stage(cfg: EvalConfig, device: str) -> Stage:
    from .fvd import I3DExtractor
    f = cfg.metrics.fvd
    ex = I3DExtractor(f.i3d_path, frames=f.frames, device=device,
                      batch_size=cfg.metrics.batch_size)
    return Stage("i3d", ex.describe(), lambda b: {"features": ex.extract([m for _, m, _ in b])}, needs_reference=True)


def _inception_stage(cfg: EvalConfig, device: str, modality: str) -> Stage:
    from .clip import frame_indices
    from .fid import InceptionExtractor
    f = cfg.metrics.fid
    ex = InceptionExtractor(f.extractor, antialias=f.antialias, device=device,
                            batch_size=max(cfg.metrics.batch_size, 8))

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        # A video contributes FID_FRAMES_PER_VIDEO evenly spaced frames, each an image: [B, k, D].
        frames = [m[frame_indices(m.shape[0], FID_FRAMES_PER_VIDEO)] if m.ndim == 4 else m[None] for _, m, _ in batch]
        k = {len(x) for x in frames}
        if len(k) != 1:
            raise MediaError(f"samples of one batch have different frame counts {sorted(k)}")
        flat = ex.extract([im for x in frames for im in x])
        return {"features": flat.reshape(len(batch), k.pop(), -1)}

    return Stage("inception", {**ex.describe(), "frames_per_video": FID_FRAMES_PER_VIDEO if modality == "video" else 1},
                 fn, needs_reference=True)


def _quality_stage() -> Stage:
    from .quality import psnr, sharpness, ssim

    def fn(batch: Batch) -> dict[str, np.ndarray]:
        sharp, ps, ss = [], [], []
        for sid, media, rec in batch:
            sharp.append(sharpness(media))
            ref = rec.get("reference") if isinstance(rec, dict) else None
            if ref:
                real = _paired_reference(ref, media)
                ps.append(psnr(media, real))
                ss.append(ssim(media, real))
            else:
                ps.append(np.nan)
                ss.append(np.nan)
        return {"sharpness": np.asarray(sharp), "psnr": np.asarray(ps), "ssim": np.asarray(ss)}

    return Stage("quality", {"sharpness": "var(Laplacian 3x3) of BT.601 luma, valid region",
                             "psnr": "torchmetrics PeakSignalNoiseRatio(data_range=255)",
                             "ssim": "torchmetrics SSIM (gaussian 11, sigma 1.5, data_range=255)", "version": 1}, fn)


def _paired_reference(path: str, media: np.ndarray) -> np.ndarray:
    """The prompt's paired real media at the sample's size and length (decoded like training data)."""
    from training.data.decode import BadSample
    video = media.ndim == 4
    frames, height, width = (media.shape[:3] if video else (1, *media.shape[:2]))
    try:
        return decode_like_training(Path(path).read_bytes(), "video" if video else "image", width, height, frames)
    except BadSample as e:
        raise MediaError(f"paired reference {path}: {e}") from None


# ----------------------------------------------------------------------------- driver


def compute_metrics(cfg: EvalConfig, layout: EvalLayout, info: dict[str, Any], records: list[dict[str, Any]],
                    progress: bool = True) -> dict[str, Any]:
    """Every metric of every variant; returns {"variants", "reference", "per_sample"}."""
    check_inputs(cfg)  # again: `eval metrics --from DIR` may name new files, or files may have moved
    modality = info["modality"]
    stages, skips = build_stages(cfg, modality)
    nb, seed = cfg.metrics.bootstrap, cfg.seed
    notes = [w for s in stages if s.precheck for w in s.precheck(records)]
    reference, ref_info = {}, None
    if any(s.needs_reference for s in stages):
        if cfg.reference.shards:
            reference, ref_info = _reference_features(cfg, layout, modality, [s for s in stages if s.needs_reference],
                                                      progress)
        else:
            for s in stages:
                if s.needs_reference:
                    for name in _metric_names(s.key):
                        skips[name] = MetricResult.skip(name, "no real statistics: set reference.shards to held-out "
                                                        "webdataset shards")
    out: dict[str, Any] = {"variants": {}, "reference": ref_info, "per_sample": {}}
    for v in info["variants"]:
        recs = [r for r in records if r["variant"] == v["name"]]
        feats = {s.key: _variant_features(s, layout, v["name"], recs, cfg.metrics.batch_size, progress) for s in stages}
        results = {k: MetricResult.from_dict(r.to_dict()) for k, r in skips.items()}  # own copies per variant
        results.update(_variant_metrics(feats, reference, stages, cfg, modality, nb, seed))
        if notes and "clip_score" in results:
            results["clip_score"].warnings.extend(notes)
        unreadable = sorted({i for f in feats.values() for ids in f.skipped.values() for i in ids})
        if unreadable:
            for r in results.values():
                r.warnings.append(f"{len(unreadable)} sample(s) unreadable and left out: {', '.join(unreadable[:5])}")
        out["variants"][v["name"]] = results
        out["per_sample"][v["name"]] = _per_sample(feats)
    return out


def _metric_names(stage_key: str) -> list[str]:
    return {"i3d": ["fvd"], "inception": ["fid", "kid"]}.get(stage_key, [])


def _variant_features(stage: Stage, layout: EvalLayout, variant: str, recs: list[dict[str, Any]], batch_size: int,
                      progress: bool) -> Features:
    # The files as they are now, not as recorded: a replaced or damaged sample invalidates the cache.
    source = stable_hash([(r["sample_id"], _file_digest(layout.root / r["path"]), r.get("prompt"), r.get("reference"))
                          for r in recs])

    def items() -> Iterator[tuple[str, Optional[np.ndarray], Any]]:
        for r in recs:
            try:
                yield r["sample_id"], read_media(layout.root / r["path"]), r
            except MediaError as e:
                log.warning("%s/%s: %s (left out of the metrics)", variant, r["sample_id"], e)
                yield r["sample_id"], None, "unreadable"

    return run_stage(stage, layout, variant, source, items, batch_size, len(recs), progress)


def _file_digest(path: Path) -> Optional[str]:
    from training.checkpoint import sha256_file
    return sha256_file(path) if path.is_file() else None


def _reference_features(cfg: EvalConfig, layout: EvalLayout, modality: str, stages: list[Stage],
                        progress: bool) -> tuple[dict[str, Features], dict[str, Any]]:
    from training.data.shards import list_shards
    r, s = cfg.reference, cfg.sampling
    try:
        urls = list_shards(r.shards)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"reference.shards: {e}") from None
    # Real clips are read at the rate the samples are written at (sampling.fps), so FVD compares
    # motion at one speed; the rate is part of the feature cache key.
    fps = s.fps if modality == "video" else None
    source = stable_hash({"shards": urls, "max": r.max_samples, "size": [s.width, s.height, s.frames], "fps": fps})

    def items() -> Iterator[tuple[str, Optional[np.ndarray], Any]]:
        return reference_media(urls, modality, s.width, s.height, s.frames, r.max_samples, fps)

    feats = {st.key: run_stage(st, layout, REFERENCE_GROUP, source, items, cfg.metrics.batch_size, r.max_samples,
                               progress) for st in stages}
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
    info = {"shards": r.shards, "n": len(first.ids), "skipped": f"skipped {n_bad} of {seen}" + (f": {reasons}" if reasons else "")}
    return feats, info


def _variant_metrics(feats: dict[str, Features], reference: dict[str, Features], stages: list[Stage],
                     cfg: EvalConfig, modality: str, nb: int, seed: int) -> dict[str, MetricResult]:
    from .quality import aggregate
    desc = {s.key: s.describe for s in stages}
    out: dict[str, MetricResult] = {}
    if "clip" in feats and feats["clip"].ids:
        from .clip import clip_cosine, clip_score, temporal_consistency_result
        a = feats["clip"].arrays
        cos = [clip_cosine(img, txt) for img, txt in zip(a["image_emb"], a["text_emb"])]
        out["clip_score"] = clip_score(cos, details=desc["clip"], n_boot=nb, seed=seed)
        if modality == "video":
            out["temporal_consistency"] = temporal_consistency_result(a["temporal"], details=desc["clip"],
                                                                      n_boot=nb, seed=seed)
    if "i3d" in feats and "i3d" in reference:
        from .fvd import fvd
        out["fvd"] = fvd(feats["i3d"].arrays["features"], reference["i3d"].arrays["features"], n_boot=nb, seed=seed,
                         details=desc["i3d"])
    if "inception" in feats and "inception" in reference:
        from .fid import fid, kid
        g = feats["inception"].arrays["features"]
        r = reference["inception"].arrays["features"]
        g2, r2 = g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1])
        details = {**desc["inception"], "n_samples": len(g), "n_reference_samples": len(r)}
        out["fid"] = fid(g2, r2, n_boot=nb, seed=seed, details=details)
        f = cfg.metrics.fid
        out["kid"] = kid(g2, r2, subset_size=f.kid_subset_size, subsets=f.kid_subsets, seed=seed)
        out["kid"].details.update(details)
    for m in out.values():  # a number from a random network must say so wherever it is shown
        if m.details.get("random_weights") and not any("random" in w for w in m.warnings):
            m.warnings.append(f"{m.name}: computed with random network weights (a test/demo model): meaningless")
    q = feats.get("quality")
    if q is not None and q.ids:
        qd = desc["quality"]
        if cfg.metrics.sharpness:
            out["sharpness"] = aggregate("sharpness", q.arrays["sharpness"], {"definition": qd["sharpness"]},
                                         n_boot=nb, seed=seed)
        if np.isfinite(q.arrays["psnr"]).any():
            out["psnr"] = aggregate("psnr", q.arrays["psnr"], {"definition": qd["psnr"], "vs": "paired reference"},
                                    n_boot=nb, seed=seed)
            out["ssim"] = aggregate("ssim", q.arrays["ssim"], {"definition": qd["ssim"], "vs": "paired reference"},
                                    n_boot=nb, seed=seed)
    return out


def _per_sample(feats: dict[str, Features]) -> dict[str, dict[str, float]]:
    from .clip import clip_cosine
    rows: dict[str, dict[str, float]] = {}

    def put(ids: Iterable[str], name: str, values: Iterable[float]) -> None:
        for i, v in zip(ids, values):
            if v is not None and np.isfinite(v):
                rows.setdefault(i, {})[name] = float(v)

    if "clip" in feats:
        a = feats["clip"].arrays
        if feats["clip"].ids:
            put(feats["clip"].ids, "clip_cosine", [clip_cosine(i, t) for i, t in zip(a["image_emb"], a["text_emb"])])
            put(feats["clip"].ids, "temporal_consistency", a["temporal"])
    if "quality" in feats and feats["quality"].ids:
        q = feats["quality"]
        for name in ("sharpness", "psnr", "ssim"):
            put(q.ids, name, q.arrays[name])
    return rows
