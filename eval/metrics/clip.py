"""CLIP score (text-image alignment) and CLIP temporal consistency, from a local CLIP folder.

Definitions, matching torchmetrics ``CLIPScore`` (``torchmetrics/functional/multimodal/clip_score.py``):

* per sample: cosine between the L2-normalised projected image and text embeddings;
* ``clip_score`` = ``100 * max(mean cosine over samples, 0)``.

For a video, the per-sample cosine is the mean over ``k`` (default 8) evenly spaced frames,
``np.linspace(0, F - 1, k).round()`` (numpy rounds halves to even), or all frames when F <= k;
then the mean over videos as above.

Prompts: CLIP's text encoder has 77 positions. torchmetrics warns and slices the token ids,
which drops the end-of-text token whose state CLIP pools, so the embedding silently comes from
the wrong position. Here a prompt over the limit raises ValueError (index, token count, limit)
unless ``truncate=True``: then it is truncated by the tokenizer (keeping the end token, as
OpenAI's ``clip.tokenize(truncate=True)``) and counted in ``describe()["truncated_prompts"]``.

Image preprocessing is the checkpoint's own CLIP image processor (bicubic shortest-edge resize,
center crop, CLIP mean/std), always the PIL implementation so the numbers do not depend on
whether torchvision is installed (transformers 5 would otherwise pick a torchvision backend).

Temporal consistency: mean cosine between CLIP embeddings of consecutive frames (all frames).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from training.errors import MissingFileError

from .base import MetricResult
from .bootstrap import DEFAULT_BOOTSTRAP, bootstrap_ci, mean_with_ci

DEFAULT_FRAMES = 8
REFERENCE = "torchmetrics CLIPScore"
RANDOM_FLAG = "lorabench_random_weights"  # set in config.json of tiny test models


def image_processor_class() -> type:
    """CLIP's PIL image processor: ``CLIPImageProcessorPil`` (transformers 5) or ``CLIPImageProcessor`` (4.x)."""
    try:
        from transformers import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: the default CLIPImageProcessor is the PIL/numpy one
        from transformers import CLIPImageProcessor
        return CLIPImageProcessor


def frame_indices(num_frames: int, k: int = DEFAULT_FRAMES) -> np.ndarray:
    """``k`` evenly spaced frame indices, ``np.linspace(0, F-1, k).round()``; all frames when F <= k."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if k < 1:
        raise ValueError(f"frames per video must be >= 1, got {k}")
    if num_frames <= k:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, k).round().astype(np.int64)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embedding_tensor(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output with the projection in ``pooler_output``; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _model_name(path: Path) -> str:
    """``org/name`` for a hub-cache snapshot (``models--org--name/snapshots/<sha>``), else the folder name."""
    for part in path.parts:
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    return path.name


def _weights_sha256(path: Path) -> Optional[str]:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:  # one digest over all shards, in name order
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class ClipModel:
    """A local CLIP checkpoint folder (``save_pretrained`` layout), loaded without network access."""

    name = "clip"

    def __init__(self, path: str | Path, *, device: str = "cpu", batch_size: int = 32, truncate: bool = False,
                 frames: int = DEFAULT_FRAMES):
        from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise MissingFileError(f"CLIP model folder {self.path} has no config.json: give a local folder "
                                    f"written by save_pretrained (or a hub-cache snapshot), set metrics.clip.path")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.image_processor = image_processor_class().from_pretrained(self.path, local_files_only=True)
        # The (model, processor) pair torchmetrics' CLIPScore accepts, for cross-checks.
        self.processor = CLIPProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer)
        self.dim = int(self.model.config.projection_dim)
        self.max_tokens = int(min(self.tokenizer.model_max_length,
                                  self.model.config.text_config.max_position_embeddings))
        self.batch_size = batch_size
        self.truncate = truncate
        self.frames = frames
        self.truncated_prompts = 0
        self._sha256: Optional[str] = None

    # -------------------------------------------------------------------------------- describe
    @property
    def random_weights(self) -> bool:
        return bool(getattr(self.model.config, RANDOM_FLAG, False))

    def describe(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = _weights_sha256(self.path) or "unknown"
        ip = self.image_processor
        d = {
            "model": _model_name(self.path),
            "path": str(self.path),
            "sha256": self._sha256,
            "embedding_dim": self.dim,
            "image_processor": f"{type(ip).__name__}(size={dict(ip.size)}, crop={dict(ip.crop_size)}, "
                               f"resample={int(ip.resample)})",
            "frames_per_video": self.frames,
            "frame_sampling": "np.linspace(0, F-1, k).round(); all frames when F <= k",
            "max_tokens": self.max_tokens,
            "truncate": self.truncate,
            "truncated_prompts": self.truncated_prompts,
            "random_weights": self.random_weights,
        }
        return d

    # -------------------------------------------------------------------------------- embeddings
    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images -> L2-normalised embeddings [N, D] float64."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = [np.asarray(im) for im in images[start:start + self.batch_size]]
            for i, im in enumerate(chunk, start):
                if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
                    raise ValueError(f"CLIP image {i}: expected uint8 (H, W, 3), got {im.dtype} {im.shape}")
            pixels = self.image_processor(images=chunk, return_tensors="pt", input_data_format="channels_last")
            feats = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            out.append(_embedding_tensor(feats).double().cpu().numpy())
        return _normalise(np.concatenate(out)) if out else np.zeros((0, self.dim))

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per prompt including the start and end tokens (what counts against ``max_tokens``)."""
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def _check_lengths(self, texts: Sequence[str]) -> None:
        over = [(i, n) for i, n in enumerate(self.token_counts(texts)) if n > self.max_tokens]
        if not over:
            return
        if not self.truncate:
            i, n = over[0]
            raise ValueError(f"prompt {i} has {n} tokens, over the CLIP text limit of {self.max_tokens} "
                             f"({len(over)} prompt(s) over): {texts[i][:80]!r}. Shorten it, or set "
                             f"metrics.clip.truncate=true to truncate (counted in the results)")
        self.truncated_prompts += len(over)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> L2-normalised embeddings [N, D] float64 (over-long prompts: see module docstring)."""
        texts = list(texts)
        self._check_lengths(texts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                 attention_mask=tok["attention_mask"].to(self.device))
            out.append(_embedding_tensor(feats).double().cpu().numpy())
        return _normalise(np.concatenate(out)) if out else np.zeros((0, self.dim))

    # -------------------------------------------------------------------------------- per sample
    def sample_features(self, media: np.ndarray, prompt: str, *, all_frames: bool = True) -> dict[str, np.ndarray]:
        """Everything the CLIP metrics need from one sample, to save and recompute from later.

        ``media``: uint8 image (H, W, 3) or video (F, H, W, 3). Returns ``image_emb`` [k, D] (the
        frames CLIP score uses; k = 1 for an image), ``frame_indices`` [k], ``text_emb`` [D], and
        for a video with ``all_frames`` also ``frame_emb`` [F, D] (every frame, for temporal
        consistency; ``image_emb`` is its rows ``frame_indices``).
        """
        media = np.asarray(media)
        text_emb = self.embed_texts([prompt])[0]
        if media.ndim == 3:
            return {"image_emb": self.embed_images([media]), "frame_indices": np.zeros(1, np.int64),
                    "text_emb": text_emb}
        if media.ndim != 4:
            raise ValueError(f"expected an image (H, W, 3) or a video (F, H, W, 3), got shape {media.shape}")
        idx = frame_indices(media.shape[0], self.frames)
        out = {"frame_indices": idx, "text_emb": text_emb}
        if all_frames:
            out["frame_emb"] = self.embed_images(list(media))
            out["image_emb"] = out["frame_emb"][idx]
        else:
            out["image_emb"] = self.embed_images(list(media[idx]))
        return out

    def extract(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Feature-extractor interface: image -> its embedding; video -> mean of its k sampled frame embeddings."""
        feats = []
        for media in batch:
            media = np.asarray(media)
            if media.ndim == 3:
                feats.append(self.embed_images([media])[0])
            else:
                feats.append(self.embed_images(list(media[frame_indices(media.shape[0], self.frames)])).mean(0))
        return np.stack(feats) if feats else np.zeros((0, self.dim))


# ------------------------------------------------------------------------------------ scores

def clip_cosine(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Per-sample CLIP cosine: mean over image rows ([k, D] frames or [D]) of cos(row, text)."""
    img = _normalise(np.atleast_2d(image_emb))
    txt = _normalise(np.asarray(text_emb).reshape(-1))
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
    e = _normalise(np.asarray(frame_emb))
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
