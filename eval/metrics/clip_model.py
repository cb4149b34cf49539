"""A local CLIP checkpoint behind the calls CLIP score and temporal consistency need (the score
math is :mod:`.clip`).

Prompts: CLIP's text encoder has 77 positions. torchmetrics warns and slices the token ids,
which drops the end-of-text token whose state CLIP pools, so the embedding silently comes from
the wrong position. Here a prompt over the limit raises ValueError (index, token count, limit)
unless ``truncate=True``: then it is truncated by the tokenizer (keeping the end token, as
OpenAI's ``clip.tokenize(truncate=True)``) and counted in ``describe()["truncated_prompts"]``.

Image preprocessing is the checkpoint's own CLIP image processor (bicubic shortest-edge resize,
center crop, CLIP mean/std), always the PIL implementation so the numbers do not depend on
whether torchvision is installed (transformers 5 would otherwise pick a torchvision backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from training.errors import MissingFileError
from training.fsio import sha256_file, sha256_json

from .base import frame_indices, l2_normalise

DEFAULT_FRAMES = 8
RANDOM_FLAG = "lorabench_random_weights"  # set in config.json of tiny test models


def image_processor_class() -> type:
    """CLIP's PIL image processor: ``CLIPImageProcessorPil`` (transformers 5) or ``CLIPImageProcessor`` (4.x)."""
    try:
        from transformers import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: the default CLIPImageProcessor is the PIL/numpy one
        from transformers import CLIPImageProcessor
        return CLIPImageProcessor


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
    """sha256 of the weights file; for a sharded checkpoint, of the shards' sha256s in name order."""
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        return None
    if len(files) == 1:
        return sha256_file(files[0])
    return sha256_json([sha256_file(f) for f in files])


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
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim))

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
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim))

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
