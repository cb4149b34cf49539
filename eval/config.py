"""Typed eval configuration: what to generate (variants x prompts x repeats) and what to measure.

Validated before Ray starts or any model loads: paths are checked, adapter run folders are
expanded into their checkpoints, and every error names the dotted key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from training.config import ConfigError, ParallelSettings, Section, describe_fields, load_typed


class EvalModelConfig(Section):
    path: str = Field(..., description="Local diffusers folder of the base model (model_index.json).")
    revision: Optional[str] = Field(None, description="Base model revision, recorded in results.json.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Denoiser (and text encoder) dtype for "
                                                   "generation; bf16 on GPUs.")
    vae_dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="VAE dtype (fp32, as Wan's reference "
                                                       "and diffusers' docs).")
    text_encoder_dtype: Optional[Literal["fp32", "bf16", "fp16"]] = Field(
        None, description="Text encoder dtype; null: model.dtype.")


class AdapterEntry(Section):
    path: str = Field(..., description="LoRA .safetensors, a checkpoint folder, or a training run folder.")
    name: Optional[str] = Field(None, description="Variant name; null derives it from the path.")
    checkpoints: Literal["all", "latest"] = Field(
        "all", description="For a run folder: every complete checkpoint ('all') or the newest ('latest').")
    allow_partial: bool = Field(False, description="Evaluate an adapter that adapts a module type in some blocks "
                                "but not others (refused by default, with the coverage table).")
    allow_inconsistent: bool = Field(False, description="Evaluate an adapter whose adapter_config.json disagrees "
                                     "with its tensors (rank, alpha, targets); scaled by alpha / the tensors' rank.")


class VariantsConfig(Section):
    base: bool = Field(True, description="Also generate from the base model (the comparison baseline).")
    adapters: list[AdapterEntry] = Field(default_factory=list, description="Adapters to evaluate.")
    scales: list[float] = Field([1.0], min_length=1, description="LoRA scales; each adapter is run at each.")

    @field_validator("adapters", mode="before")
    @classmethod
    def _plain_paths(cls, v: Any) -> Any:
        # `adapters: [runs/x, lora.safetensors]` is the common case: accept bare strings.
        if isinstance(v, list):
            return [{"path": a} if isinstance(a, str) else a for a in v]
        return v

    @field_validator("scales")
    @classmethod
    def _nonzero(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("a scale of 0 is the base model: set variants.base=true instead")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate scales {v}")
        return v


class PromptsConfig(Section):
    file: str = Field(..., description="Prompts: .txt (one per line) or .jsonl ({'prompt', 'id'?, 'reference'?}; "
                      "'reference' is a paired real video/image, relative to the file, for PSNR/SSIM).")
    samples_per_prompt: int = Field(1, ge=1, le=10000, description="Repeats per prompt (different seeds).")
    limit: Optional[int] = Field(None, ge=1, description="Use only the first N prompts.")
    too_long: Literal["error", "skip", "truncate"] = Field(
        "error", description="A prompt longer than the text encoder's limit: stop ('error'), leave it out of every "
        "variant ('skip') or keep the tokens the encoder reads ('truncate'); skipped and truncated prompts are "
        "listed in eval.json. The same policy as training's data.long_captions.")


class ReferenceConfig(Section):
    shards: Optional[Union[str, list[str]]] = Field(
        None, description="Webdataset shards of real media for FVD/FID statistics (held-out data!).")
    max_samples: Optional[int] = Field(None, ge=2, description="Use at most N reference samples.")
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0, description="Fail when more reference samples are "
                                    "unreadable than this fraction (they are counted either way).")


class SamplingConfig(Section):
    # null = the model card's value for the model in model.path (training.models: sampling_defaults),
    # resolved before generation and recorded in eval.json.
    width: Optional[int] = Field(None, ge=8, le=8192, description="Output width in pixels; null: the model card's.")
    height: Optional[int] = Field(None, ge=8, le=8192, description="Output height in pixels; null: the model card's.")
    frames: Optional[int] = Field(None, ge=1, le=1024, description="Frames per video (1 for image models); null: "
                                  "the model card's.")
    steps: Optional[int] = Field(None, ge=1, le=1000, description="Denoising steps; null: the model card's.")
    guidance: Optional[float] = Field(None, ge=0.0, description="Classifier-free guidance scale; null: the card's.")
    shift: Optional[float] = Field(None, gt=0.0, description="Scheduler flow shift; null: the card's, else the "
                                   "folder's scheduler config.")
    negative_prompt: Optional[str] = Field(None, description="Negative prompt; null: the model's reference one "
                                           "(Wan: sample_neg_prompt), '' for none.")
    fps: Optional[int] = Field(None, ge=1, le=240, description="Frame rate written into the mp4 files; null: the "
                               "model's (Wan2.1 16, Wan2.2-TI2V-5B 24).")
    max_text_length: Optional[int] = Field(None, ge=1, description="Text sequence length; null: the spec default.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where actors generate.")
    offload: bool = Field(False, description="diffusers model CPU offload on each actor: one component on its GPU "
                          "at a time (needs CUDA).")


class EvalParallelConfig(ParallelSettings):
    backend: Literal["ray", "none"] = Field("ray", description="'ray': a pool of actors, each holding one "
                                            "pipeline; 'none': this process.")


class ClipMetricConfig(Section):
    path: Optional[str] = Field(None, description="Local CLIP folder (e.g. openai/clip-vit-large-patch14); "
                                "null skips CLIP score and temporal consistency.")
    frames: int = Field(8, ge=1, description="Evenly spaced frames per video for CLIP score.")
    truncate: bool = Field(False, description="Truncate prompts over CLIP's 77 tokens (counted) instead of failing.")


class FvdMetricConfig(Section):
    i3d_path: Optional[str] = Field(None, description="i3d_pretrained_400.pt state dict or TorchScript detector; "
                                    "null skips FVD.")
    frames: int = Field(16, ge=9, description="First N frames of each clip fed to I3D (the network needs >= 9).")


class FidMetricConfig(Section):
    extractor: Optional[str] = Field(None, description="TorchScript Inception (e.g. inception-2015-12-05.pt); "
                                     "null skips FID/KID.")
    antialias: bool = Field(True, description="Antialiased bilinear resize to 299 (torchmetrics' default).")
    kid_subset_size: int = Field(1000, ge=2, description="KID subset size (clamped to the sample count).")
    kid_subsets: int = Field(100, ge=1, description="KID subsets.")


class MetricsConfig(Section):
    enabled: bool = Field(True, description="Compute metrics after generation.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where feature extractors run.")
    batch_size: int = Field(8, ge=1, description="Samples per feature-extractor batch.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap replicates for 95% intervals (0: none).")
    clip: ClipMetricConfig = Field(default_factory=ClipMetricConfig)
    fvd: FvdMetricConfig = Field(default_factory=FvdMetricConfig)
    fid: FidMetricConfig = Field(default_factory=FidMetricConfig)
    sharpness: bool = Field(True, description="Variance of the Laplacian per sample.")


class EvalConfig(Section):
    name: str = Field(..., min_length=1, description="Eval name: outputs go to <output_dir>/<name>/.")
    output_dir: str = Field("evals", description="Parent folder of eval folders.")
    seed: int = Field(0, ge=0, description="Base seed; sample seed = f(seed, prompt id, repeat).")
    model: EvalModelConfig
    variants: VariantsConfig = Field(default_factory=VariantsConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    parallel: EvalParallelConfig = Field(default_factory=EvalParallelConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        if "/" in self.name or self.name in {".", ".."}:
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if not self.variants.base and not self.variants.adapters:
            raise ValueError("nothing to evaluate: set variants.base=true or list variants.adapters")
        fvd = self.metrics.fvd
        frames = self.sampling.frames
        if self.metrics.enabled and fvd.i3d_path and frames is not None and frames > 1 and fvd.frames > frames:
            raise ValueError(f"metrics.fvd.frames={fvd.frames} but samples have sampling.frames={self.sampling.frames}: "
                             f"FVD takes the first {fvd.frames} frames of each video; lower metrics.fvd.frames")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_eval_config(path: Union[str, Path, None], overrides: Optional[list[str]] = None,
                     base: Optional[dict[str, Any]] = None) -> EvalConfig:
    """Load and validate an eval config (YAML + dotted overrides); ConfigError names every problem."""
    return load_typed(EvalConfig, path, overrides, base, shipped="configs/eval/")


def help_text() -> str:
    return "\n".join(describe_fields(EvalConfig))


__all__ = ["AdapterEntry", "ConfigError", "EvalConfig", "help_text", "load_eval_config"]
