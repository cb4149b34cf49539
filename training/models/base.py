"""The model-spec contract: everything family-specific lives behind this interface.

The trainer, the sampler and (later) eval only ever call these methods; they never branch on
the family. Specs are single-device code: no DeepSpeed, no Ray, no process groups here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import LorabenchError
from ..precision import ComponentDtypes, component_role


class ModelFolderError(LorabenchError, ValueError):
    """The model folder is missing, incomplete or of another family."""


@dataclass
class LatentGeometry:
    """How pixels map to latents for a model folder (read from its VAE config, no weights)."""

    spatial: int        # pixels per latent, each spatial axis
    temporal: int       # frames per latent frame after the first (1 for image models)
    patch: tuple[int, int]  # transformer patch size (h, w) in latents

    def check(self, width: int, height: int, frames: int) -> list[str]:
        """Problems with a training/sampling shape, as human-readable strings."""
        problems = []
        step = self.spatial * self.patch[0]
        for name, v in (("width", width), ("height", height)):
            if v % step:
                problems.append(f"data.{name}={v} must be a multiple of {step} "
                                f"(VAE factor {self.spatial} x patch {self.patch[0]}); "
                                f"try {max(step, round(v / step) * step)}")
        if self.temporal > 1 and (frames - 1) % self.temporal:
            ok = (frames - 1) // self.temporal * self.temporal + 1
            problems.append(f"data.frames={frames} must be 4k+1 style: (frames-1) divisible by "
                            f"{self.temporal}; try {ok} or {ok + self.temporal}")
        if self.temporal == 1 and frames != 1:
            problems.append(f"data.frames={frames}: this is an image model, set data.frames=1")
        return problems


@dataclass(frozen=True)
class SamplingDefaults:
    """What the model's card samples with; every field can be overridden by the user.

    ``shift`` None keeps the folder's scheduler config. ``source`` names where the values come
    from, and is recorded next to them (eval.json, samples.jsonl).
    """

    width: int
    height: int
    frames: int
    fps: int
    steps: int
    guidance: float
    shift: Optional[float]
    negative_prompt: str
    source: str


#: the SamplingDefaults fields a user's sampling settings may override (all but ``source``)
CARD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingDefaults) if f.name != "source")


@dataclass
class Conditions:
    """Encoded text conditions, as keyword arguments for the transformer's forward."""

    kwargs: dict[str, torch.Tensor]

    def to(self, device: torch.device, dtype: Optional[torch.dtype] = None) -> "Conditions":
        return Conditions({k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                           for k, v in self.kwargs.items()})


class ModelSpec(ABC):
    """One diffusion family: how to load, encode, run and sample it."""

    #: registry name (``model.family``)
    name: str
    #: "video" or "image": which media the data pipeline decodes
    modality: str
    #: diffusers pipeline class used both to load components and to sample
    pipeline_cls: type
    #: default LoRA target module names (peft ``target_modules``)
    default_lora_targets: list[str]
    #: text sequence length used when training (and sampling, so they match)
    default_max_text_length: int

    # ---------------------------------------------------------------- folder inspection (cheap)

    def read_model_index(self, path: str | Path) -> dict[str, Any]:
        p = Path(path)
        index = p / "model_index.json"
        if not index.is_file():
            raise ModelFolderError(
                f"{p} is not a diffusers model folder: {index.name} is missing. Point model.path at "
                f"a local diffusers checkout, or make a tiny one: lorabench make-tiny --family {self.name} --out DIR")
        data = json.loads(index.read_text())
        expected = self.pipeline_cls.__name__
        if data.get("_class_name") != expected:
            raise ModelFolderError(
                f"{index}: _class_name is {data.get('_class_name')!r}, but model.family={self.name!r} "
                f"expects {expected!r}; fix model.family or model.path")
        return data

    def read_component_config(self, path: str | Path, component: str) -> dict[str, Any]:
        cfg = Path(path) / component / "config.json"
        if not cfg.is_file():
            raise ModelFolderError(f"{cfg} is missing: the model folder is incomplete")
        return json.loads(cfg.read_text())

    @abstractmethod
    def geometry(self, path: str | Path) -> LatentGeometry:
        """Latent geometry of a model folder, from JSON configs only."""

    def validate_folder(self, path: str | Path) -> None:
        """Fail fast on folders this spec cannot train (before any weights load)."""
        self.read_model_index(path)

    # ---------------------------------------------------------------- heavy work

    def load_pipeline(self, path: str | Path, dtype: "torch.dtype | ComponentDtypes" = torch.float32,
                      without: tuple[str, ...] | list[str] = ()) -> Any:
        """Load the diffusers pipeline from a local folder (never from a hub).

        ``dtype`` is one dtype for everything, or :class:`ComponentDtypes` (denoiser, VAE and
        text encoders each their own). Loading with a dtype, rather than ``.to(dtype)`` after,
        keeps the modules diffusers marks ``_keep_in_fp32_modules`` in fp32. Components named in
        ``without`` are not loaded (None): the precompute stage needs no transformer, training
        from a latent cache no VAE or text encoder.
        """
        index = self.read_model_index(path)
        self.validate_folder(path)
        if isinstance(dtype, ComponentDtypes):
            dtype = dtype.for_pipeline([k for k, v in index.items() if not k.startswith("_")
                                        and isinstance(v, list) and v[0] is not None and k not in without])
        return self.pipeline_cls.from_pretrained(str(path), dtype=dtype, local_files_only=True,
                                                 **{name: None for name in without})

    def encoder_components(self, path: str | Path) -> list[str]:
        """The VAE and text encoders of a folder: what training from a latent cache leaves unloaded."""
        return [c for c in self.components(path) if component_role(c) in ("vae", "text")]

    def components(self, path: str | Path) -> list[str]:
        """Names of the model components present in the folder (model_index.json order)."""
        index = self.read_model_index(path)
        return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
                and v[0] is not None and component_role(k)]

    @abstractmethod
    def encode_text(self, pipe: Any, captions: list[str], device: torch.device,
                    max_length: int) -> Conditions:
        """Text conditions exactly as the pipeline computes them at inference."""

    def encode_pixels(self, pipe: Any, pixels: torch.Tensor,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
        """Pixels in [-1, 1] (B,C,H,W) or (B,C,F,H,W) -> normalised latents.

        Two halves, so that training from precomputed latents (training.cache) runs exactly the
        second half on what the first half wrote: the deterministic VAE encode, then the
        (possibly random) draw and normalisation, which needs only the VAE's config.
        """
        return self.latents_from_posterior(dict(pipe.vae.config), self.encode_posterior(pipe, pixels),
                                           generator)

    @abstractmethod
    def encode_posterior(self, pipe: Any, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The VAE's deterministic output for ``pixels`` (e.g. the posterior's mean and std),
        batch first, in the VAE's dtype: what a latent cache stores."""

    @abstractmethod
    def cache_shapes(self, path: str | Path, width: int, height: int, frames: int,
                     max_text: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Per-sample tensors a latent cache stores, from the folder's configs alone (no weights):
        ``{"posterior.mean": ("vae", shape), "cond.<kwarg>": ("text", shape), ...}``; the role
        gives the dtype. Used to say what precompute will write before it starts."""

    @abstractmethod
    def latents_from_posterior(self, vae_config: dict[str, Any], posterior: dict[str, torch.Tensor],
                               generator: Optional[torch.Generator]) -> torch.Tensor:
        """Normalised float32 latents from :meth:`encode_posterior`'s output (draws from
        ``generator`` where the family samples the posterior)."""

    @abstractmethod
    def predict(self, pipe: Any, model: torch.nn.Module, noisy: torch.Tensor,
                timesteps: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """One forward of ``model`` (the pipeline's transformer, possibly wrapped by an engine):
        the flow-matching velocity prediction. ``pipe`` supplies configuration only."""

    def flow_shift(self, pipe: Any) -> float:
        """The scheduler's own timestep shift, so training and sampling agree."""
        cfg = pipe.scheduler.config
        if cfg.get("use_dynamic_shifting", False):
            raise NotImplementedError(
                f"{type(pipe.scheduler).__name__} uses dynamic shifting (resolution-dependent); "
                "training with it is not supported yet: set use_dynamic_shifting=false in scheduler/")
        return float(cfg.get("flow_shift") or cfg.get("shift") or 1.0)

    def num_train_timesteps(self, pipe: Any) -> int:
        return int(pipe.scheduler.config.get("num_train_timesteps", 1000))

    def text_limits(self, max_length: int) -> dict[str, int]:
        """Tokenizer subfolder -> the most tokens (special ones included) the pipeline keeps.

        The pipelines truncate longer prompts without an error; eval checks prompts against
        these limits so that a prompt is never silently cut.
        """
        return {"tokenizer": max_length}

    @abstractmethod
    def sampling_defaults(self, path: str | Path) -> SamplingDefaults:
        """The model card's sampling settings for the model in ``path`` (read from its configs)."""

    def folder_shift(self, path: str | Path) -> Optional[float]:
        """The flow shift in the folder's ``scheduler/scheduler_config.json`` (None if it has none)."""
        cfg = Path(path) / "scheduler" / "scheduler_config.json"
        if not cfg.is_file():
            return None
        data = json.loads(cfg.read_text())
        for key in ("flow_shift", "shift"):
            if data.get(key) is not None:
                return float(data[key])
        return None

    def set_sampling_shift(self, pipe: Any, shift: Optional[float]) -> None:
        """Rebuild the pipeline's scheduler with another flow shift (None: keep the folder's)."""
        if shift is None:
            return
        cfg = pipe.scheduler.config
        key = "flow_shift" if "flow_shift" in cfg else "shift"
        if key not in cfg:
            raise ValueError(f"{type(pipe.scheduler).__name__} has no flow shift to set; leave shift unset")
        pipe.scheduler = type(pipe.scheduler).from_config(cfg, **{key: float(shift)})

    @abstractmethod
    def sample_kwargs(self, width: int, height: int, frames: int) -> dict[str, Any]:
        """Keyword arguments for the pipeline's __call__ that fix the output shape."""

    @abstractmethod
    def make_tiny(self, out: str | Path, seed: int = 0, **options: Any) -> Path:
        """Write a complete tiny random diffusers folder that ``load_pipeline`` accepts."""
