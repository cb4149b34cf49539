"""Fixed-seed sampling: one explicit CPU generator per sample, outputs keyed by sample index.

Initial noise is drawn on CPU from the sample's own generator, so the result depends only on
(model, adapter, prompt, seed, settings), not on device order, batch composition or worker count.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from .adapters import AdapterReport, load_adapter, verify_effect
from .adapters.report import value_counts
from .fsio import atomic_write_bytes, sha256_bytes
from .media_io import encode_sample, media_extension, to_uint8
from .config import ConfigError
from .data.captions import describe_over, long_caption_verdict
from .errors import MissingFileError
from .console import progress as progress_bar
from .models import ModelSpec, spec_for_folder
from .models.base import CARD_FIELDS
from .outputs import check_writable_dir
from .precision import ComponentDtypes, accept_any_float_input
from .runtime import Precision, RuntimeConfigError, resolve_device
from .seeding import sample_seed

log = logging.getLogger("lorabench.generate")


@dataclass
class SampleRecord:
    index: int
    prompt: str
    seed: int
    path: str
    adapter: Optional[str]
    adapter_sha256: Optional[str]
    adapter_scale: Optional[float]
    adapter_rank: Optional[str]
    adapter_alpha: Optional[str]
    output_sha256: str  # of the raw uint8 output, before any lossy encoding
    seconds: float
    settings: dict[str, Any]  # SamplingSettings: size, fps, steps, guidance, shift, negative prompt, dtypes
    prompt_truncated: bool = False  # over the encoder limit and kept (--long-prompts truncate)


def read_prompt_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, fields) per prompt; ``fields["prompt"]`` is the stripped text.

    ``.txt``: one prompt per line, blank lines and '#' comments skipped. ``.jsonl``: one JSON
    object per line with a non-empty string "prompt" (other fields, e.g. eval's "id", kept).
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"prompts file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the prompts file as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or (p.suffix != ".jsonl" and line.startswith("#")):
            continue
        if p.suffix != ".jsonl":
            rows.append((n, {"prompt": line}))
            continue
        try:
            obj = json.loads(line)
            text = obj["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{p}:{n}: expected a JSON object with a \"prompt\" field") from None
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{p}:{n}: \"prompt\" must be a non-empty string")
        rows.append((n, {**obj, "prompt": text.strip()}))
    if not rows:
        raise ConfigError(f"{p} holds no prompts (blank lines and '#' comments are skipped): add one prompt per line")
    return rows


def read_prompts(path: str | Path) -> list[str]:
    """The prompt texts of a .txt or .jsonl prompts file (see :func:`read_prompt_rows`)."""
    return [fields["prompt"] for _, fields in read_prompt_rows(path)]


@dataclass(frozen=True)
class SamplingSettings:
    """Every setting that changes pixels, resolved: the user's value, else the model card's."""

    width: int
    height: int
    frames: int
    fps: int
    steps: int
    guidance: float
    shift: Optional[float]       # the scheduler's flow shift actually used
    negative_prompt: str
    max_text_length: int
    dtypes: ComponentDtypes
    offload: bool = False
    defaults_source: str = ""

    @classmethod
    def resolve(cls, spec: ModelSpec, model_dir: str | Path, *, dtypes: ComponentDtypes, offload: bool = False,
                **given: Any) -> "SamplingSettings":
        """``given`` fields left None take the spec's model-card defaults (``spec.sampling_defaults``)."""
        d = spec.sampling_defaults(model_dir)
        pick = {k: given.get(k) if given.get(k) is not None else getattr(d, k) for k in CARD_FIELDS}
        if pick["shift"] is None:  # keep the folder's scheduler: record the value it has
            pick["shift"] = spec.folder_shift(model_dir)
        max_len = given.get("max_text_length") or spec.default_max_text_length
        return cls(**pick, max_text_length=int(max_len), dtypes=dtypes, offload=offload,
                   defaults_source=d.source)

    @property
    def uses_negative_prompt(self) -> bool:
        """The pipelines only encode the negative prompt when classifier-free guidance is on."""
        return self.guidance > 1 and bool(self.negative_prompt)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dtypes"] = self.dtypes.to_dict()
        return out


def load_sampling_pipeline(spec: ModelSpec, model_dir: str | Path, settings: SamplingSettings,
                           device: torch.device) -> Any:
    """The pipeline in the settings' dtypes, on ``device`` (or model-offloaded to it), with the shift set."""
    pipe = spec.load_pipeline(model_dir, dtype=settings.dtypes)
    vae = getattr(pipe, "vae", None)
    if vae is not None and settings.dtypes.vae != settings.dtypes.denoiser:
        for part in ("decoder", "post_quant_conv"):  # where the denoiser's latents enter the VAE
            if isinstance(getattr(vae, part, None), torch.nn.Module):
                accept_any_float_input(getattr(vae, part))
    if settings.offload:
        if device.type != "cuda":
            raise RuntimeConfigError("CPU offload moves each component to the GPU for its turn: it needs a CUDA "
                                     "device (this one is %s); drop the offload option" % device)
        # diffusers' model CPU offload: one component on the GPU at a time (text encoder, then
        # transformer, then VAE), the rest in CPU memory.
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    spec.set_sampling_shift(pipe, settings.shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(model_dir: str | Path, prompts: list[str], out_dir: str | Path, *, seed: int = 0,
             adapter: Optional[str | Path] = None, scale: float = 1.0, width: Optional[int] = None,
             height: Optional[int] = None, frames: Optional[int] = None, steps: Optional[int] = None,
             guidance: Optional[float] = None, shift: Optional[float] = None,
             negative_prompt: Optional[str] = None, max_text_length: Optional[int] = None,
             fps: Optional[int] = None, dtype: str = "auto", vae_dtype: str = "fp32",
             text_encoder_dtype: Optional[str] = None, offload: bool = False, device: str = "auto",
             progress: bool = True, allow_partial: bool = False, allow_inconsistent: bool = False,
             long_prompts_policy: str = "error") -> list[SampleRecord]:
    """Generate one sample per prompt into ``out_dir``; returns the records (also in samples.jsonl).

    Settings left None take the model card's values (``spec.sampling_defaults``). ``dtype``
    'auto' is bf16 on a GPU and fp32 on CPU.
    """
    check_writable_dir(out_dir, "--out")
    spec: ModelSpec = spec_for_folder(str(model_dir))
    dev = resolve_device(device)
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    dtypes = ComponentDtypes.resolve(dtype, vae_dtype, text_encoder_dtype)
    Precision.resolve(dtype, dev)  # fp16 needs CUDA, bf16 a GPU that has it
    settings = SamplingSettings.resolve(spec, model_dir, dtypes=dtypes, offload=offload, width=width,
                                        height=height, frames=frames, fps=fps, steps=steps, guidance=guidance,
                                        shift=shift, negative_prompt=negative_prompt,
                                        max_text_length=max_text_length)
    problems = spec.geometry(model_dir).check(settings.width, settings.height, settings.frames)
    if problems:
        raise ConfigError("invalid sampling shape: " + "; ".join(
            p.replace("data.width", "--width").replace("data.height", "--height").replace("data.frames", "--frames")
            for p in problems))
    long_prompts = check_prompt_lengths(spec, model_dir, prompts, settings, long_prompts_policy)
    pipe = load_sampling_pipeline(spec, model_dir, settings, dev)
    info: Optional[AdapterReport] = None
    if adapter is not None:
        # Every adapter module must patch the model (else AdapterError with the table), and one
        # forward with vs without it must differ: a LoRA that does nothing never reaches samples.
        info = load_adapter(pipe, adapter, scale=scale, allow_partial=allow_partial,
                            allow_inconsistent=allow_inconsistent)
        verify_effect(pipe, spec, info)
        log.info("adapter applied: %s", info.summary())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, prompt in enumerate(progress_bar(prompts, desc="generate", unit="sample", disable=not progress)):
        if long_prompts.get(i) == "skip":  # counted above; the others keep their index and seed
            continue
        s = sample_seed(seed, i)
        start = time.perf_counter()
        pixels = render(pipe, spec, prompt, s, settings)
        path = write_sample(pixels, spec, out / f"sample-{i:04d}", settings.fps)
        records.append(SampleRecord(
            index=i, prompt=prompt, seed=s, path=str(path),
            adapter=info.source if info else None, adapter_sha256=info.sha256 if info else None,
            adapter_scale=scale if info else None,
            adapter_rank=value_counts(info.ranks) if info else None,
            adapter_alpha=value_counts(info.alphas) if info else None,
            output_sha256=pixels_sha256(pixels), seconds=round(time.perf_counter() - start, 4),
            settings=settings.to_dict(), prompt_truncated=long_prompts.get(i) == "truncate"))
    with open(out / "samples.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    return records


def token_lengths(model_dir: str | Path, subfolders: Iterable[str], texts: list[str]) -> dict[str, list[int]]:
    """Tokens per text (special tokens included) for each tokenizer subfolder of ``model_dir``."""
    from transformers import AutoTokenizer

    counts = {}
    for sub in subfolders:
        folder = Path(model_dir) / sub
        if not folder.is_dir():
            raise ConfigError(f"{folder} is missing: the model folder has no {sub}/")
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        counts[sub] = [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
    return counts


def check_prompt_lengths(spec: ModelSpec, model_dir: str | Path, prompts: list[str],
                         settings: SamplingSettings, policy: str = "error") -> dict[int, str]:
    """``{prompt index: "truncate" | "skip"}`` for prompts over the text encoder limit.

    The policy is training's ``data.long_captions`` one (``error`` refuses, ``skip`` leaves the
    prompt out, ``truncate`` keeps what the encoder reads); the pipeline would otherwise cut
    such a prompt silently. The negative prompt (when guidance uses it) is always refused.
    """
    texts = list(prompts) + ([settings.negative_prompt] if settings.uses_negative_prompt else [])
    limits = spec.text_limits(settings.max_text_length)
    counts = token_lengths(model_dir, limits, texts)
    actions = {}
    for i, text in enumerate(texts):
        per_tokenizer = {sub: counts[sub][i] for sub in limits}
        negative = i == len(prompts)
        action, over_detail = long_caption_verdict(per_tokenizer, limits, "error" if negative else policy)
        if action == "keep":
            continue
        over = describe_over(over_detail)
        if action == "error":
            what = "the negative prompt" if negative else f"prompt {i + 1} ({text[:40]!r}...)"
            fix = "" if negative else ", or pass --long-prompts truncate|skip"
            raise ConfigError(f"{what} has {over}: the pipeline would cut it silently; shorten it or raise "
                              f"--max-text-length{fix}")
        log.warning("prompt %d %s (--long-prompts %s): %s", i + 1, "is cut by the text encoder"
                    if action == "truncate" else "is left out", policy, over)
        actions[i] = action
    return actions


def render(pipe: Any, spec: ModelSpec, prompt: str, seed: int, settings: SamplingSettings) -> np.ndarray:
    """One sample as uint8 pixels: (F, H, W, 3) for video, (H, W, 3) for images.

    The generator is a fresh CPU ``torch.Generator`` seeded with ``seed``: diffusers draws the
    initial noise on it (on CPU, then moves it), so the noise is the same on any device and
    does not depend on what this process generated before.
    """
    s = settings
    result = pipe(prompt=prompt, negative_prompt=s.negative_prompt or None,
                  generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=s.steps,
                  guidance_scale=s.guidance, max_sequence_length=s.max_text_length,
                  **spec.sample_kwargs(s.width, s.height, s.frames))
    return to_uint8(result.frames[0] if spec.modality == "video" else result.images[0])


def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 of the raw uint8 output, before any lossy encoding: compares samples across runs."""
    return sha256_bytes(np.ascontiguousarray(pixels).tobytes())


def write_sample(pixels: np.ndarray, spec: ModelSpec, stem: Path, fps: int) -> Path:
    """``stem``.mp4 (video) or ``stem``.png (image), written atomically."""
    path = stem.with_suffix("." + media_extension(spec.modality))
    atomic_write_bytes(path, encode_sample(pixels, spec.modality, fps))
    return path
