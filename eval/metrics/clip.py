"""CLIP score (text-image alignment) and CLIP temporal consistency, from CLIP embeddings (the
network is :mod:`.clip_model`).

Definitions, matching torchmetrics ``CLIPScore`` (``torchmetrics/functional/multimodal/clip_score.py``):

* per sample: cosine between the L2-normalised projected image and text embeddings;
* ``clip_score`` = ``100 * max(mean cosine over samples, 0)``.

For a video, the per-sample cosine is the mean over ``k`` (default 8) evenly spaced frames,
``np.linspace(0, F - 1, k).round()`` (numpy rounds halves to even, :func:`.base.frame_indices`),
or all frames when F <= k; then the mean over videos as above.

Temporal consistency: mean cosine between CLIP embeddings of consecutive frames (all frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from .base import MetricResult, l2_normalise
from .bootstrap import DEFAULT_BOOTSTRAP, bootstrap_ci, mean_with_ci
from .paired import MeanOf, RowStat
from .spec import Batch, Extractor, Features, MetricInputs, MetricSpec

if TYPE_CHECKING:
    from ..config import EvalConfig

REFERENCE = "torchmetrics CLIPScore"


def clip_cosine(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Per-sample CLIP cosine: mean over image rows ([k, D] frames or [D]) of cos(row, text)."""
    img = l2_normalise(np.atleast_2d(image_emb))
    txt = l2_normalise(np.asarray(text_emb).reshape(-1))
    return float((img @ txt).mean())


def clip_score(per_sample_cosines: Sequence[float], *, details: Optional[dict[str, Any]] = None,
               n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> MetricResult:
    """``100 * max(mean cosine, 0)`` (torchmetrics CLIPScore) with a bootstrap interval.

    ``details``: pass ``ClipModel.describe()`` so the model, frames per video and truncation
    count are recorded with the number.
    """
    cos = np.asarray(per_sample_cosines, dtype=np.float64).reshape(-1)
    info = {"reference": REFERENCE, "definition": "100 * max(mean cosine(image, text), 0); video: mean over "
                                                  "sampled frames, then over samples", **(details or {})}
    if len(cos) == 0:
        return MetricResult.skip("clip_score", "no samples")
    warnings = []
    if info.get("random_weights"):
        warnings.append("clip_score: random CLIP weights, the value is meaningless")
    if info.get("truncated_prompts"):
        warnings.append(f"clip_score: {info['truncated_prompts']} prompt(s) truncated to {info.get('max_tokens')} "
                        f"tokens")

    def stat(x: np.ndarray) -> float:
        return 100.0 * max(float(x.mean()), 0.0)

    return MetricResult(name="clip_score", value=stat(cos), n=len(cos),
                        ci95=bootstrap_ci(stat, [cos], n_boot=n_boot, seed=seed), details=info, warnings=warnings)


def temporal_consistency(frame_emb: np.ndarray) -> float:
    """Per-video mean cosine between embeddings of consecutive frames ([F, D], F >= 2)."""
    e = l2_normalise(np.asarray(frame_emb))
    if e.ndim != 2 or len(e) < 2:
        raise ValueError(f"temporal consistency needs >= 2 frame embeddings [F, D], got shape {e.shape}")
    return float(np.sum(e[1:] * e[:-1], axis=1).mean())


def temporal_consistency_result(per_sample: Sequence[float], *, details: Optional[dict[str, Any]] = None,
                                n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> MetricResult:
    """Mean of per-video :func:`temporal_consistency` values, with a bootstrap interval."""
    x = np.asarray(per_sample, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return MetricResult.skip("temporal_consistency", "no videos")
    value, ci = mean_with_ci(x, n_boot=n_boot, seed=seed)
    info = {"definition": "mean cosine between CLIP embeddings of consecutive frames (all frames), "
                          "mean over videos", **(details or {})}
    return MetricResult(name="temporal_consistency", value=value, n=len(x), ci95=ci, details=info)


# ------------------------------------------------------------------------------------ in the metric registry


def _extractor(cfg: EvalConfig, device: str, modality: str) -> Extractor:
    from training.config import ConfigError

    from .clip_model import ClipModel
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

    return Extractor(model.describe(), fn, precheck)


def _cosines(feats: Features) -> np.ndarray:
    a = feats.arrays
    return np.asarray([clip_cosine(img, txt) for img, txt in zip(a["image_emb"], a["text_emb"])])


def _compute(x: MetricInputs) -> dict[str, MetricResult]:
    out = {"clip_score": clip_score(_cosines(x.features), details=x.describe, n_boot=x.n_boot, seed=x.seed)}
    if x.modality == "video":
        out["temporal_consistency"] = temporal_consistency_result(x.features.arrays["temporal"], details=x.describe,
                                                                  n_boot=x.n_boot, seed=x.seed)
    return out


def _per_sample(feats: Features) -> dict[str, np.ndarray]:
    return {"clip_cosine": _cosines(feats), "temporal_consistency": feats.arrays["temporal"]}


def _paired(feats: Features, _ref: Optional[Features], _settings: Any) -> dict[str, RowStat]:
    # The same formulas as clip_score / temporal_consistency_result, on any rows.
    return {"clip_score": MeanOf(_cosines(feats), scale=100.0, floor=0.0),
            "temporal_consistency": MeanOf(np.asarray(feats.arrays["temporal"], dtype=np.float64))}


SPEC = MetricSpec(
    key="clip", names=("clip_score", "temporal_consistency"), features=("image_emb", "text_emb", "temporal"),
    extractor=_extractor, compute=_compute, per_sample=_per_sample, setting="metrics.clip.path",
    paired=_paired, directions=(("clip_score", 1), ("temporal_consistency", 1)),
    unconfigured=lambda: [MetricResult.skip("clip_score", "no CLIP model: set metrics.clip.path to a local CLIP "
                                            "folder (e.g. openai/clip-vit-large-patch14)")])
