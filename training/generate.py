"""Fixed-seed sampling: one explicit CPU generator per sample, outputs keyed by sample index.

Initial noise is drawn on CPU from the sample's own generator, so the result depends only on
(model, adapter, prompt, seed, settings), not on device order, batch composition or worker count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import AdapterReport, load_adapter, verify_effect
from .adapters.report import value_counts
from .media_io import to_uint8, write_mp4, write_png
from .models import ModelSpec, spec_for_folder
from .runtime import resolve_device
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


def read_prompt_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, fields) per prompt; ``fields["prompt"]`` is the stripped text.

    ``.txt``: one prompt per line, blank lines and '#' comments skipped. ``.jsonl``: one JSON
    object per line with a non-empty string "prompt" (other fields, e.g. eval's "id", kept).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
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
            raise ValueError(f"{p}:{n}: expected a JSON object with a \"prompt\" field") from None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{p}:{n}: \"prompt\" must be a non-empty string")
        rows.append((n, {**obj, "prompt": text.strip()}))
    if not rows:
        raise ValueError(f"{p} holds no prompts")
    return rows


def read_prompts(path: str | Path) -> list[str]:
    """The prompt texts of a .txt or .jsonl prompts file (see :func:`read_prompt_rows`)."""
    return [fields["prompt"] for _, fields in read_prompt_rows(path)]


def generate(model_dir: str | Path, prompts: list[str], out_dir: str | Path, *, seed: int = 0,
             adapter: Optional[str | Path] = None, scale: float = 1.0, width: int = 64,
             height: int = 64, frames: int = 9, steps: int = 20, guidance: float = 5.0,
             max_text_length: Optional[int] = None, fps: int = 8, device: str = "auto",
             progress: bool = True) -> list[SampleRecord]:
    """Generate one sample per prompt into ``out_dir``; returns the records (also in samples.jsonl)."""
    spec: ModelSpec = spec_for_folder(str(model_dir))
    problems = spec.geometry(model_dir).check(width, height, frames)
    if problems:
        raise ValueError("invalid sampling shape:\n  " + "\n  ".join(problems))
    dev = resolve_device(device)
    pipe = spec.load_pipeline(model_dir).to(dev)
    pipe.set_progress_bar_config(disable=True)
    info: Optional[AdapterReport] = None
    if adapter is not None:
        # Every adapter module must patch the model (else AdapterError with the table), and one
        # forward with vs without it must differ: a LoRA that does nothing never reaches samples.
        info = load_adapter(pipe, adapter, scale=scale)
        verify_effect(pipe, spec, info)
        log.info("adapter applied: %s", info.summary())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_len = max_text_length or spec.default_max_text_length
    records = []
    for i, prompt in enumerate(tqdm(prompts, desc="generate", unit="sample", disable=not progress)):
        s = sample_seed(seed, i)
        start = time.perf_counter()
        pixels = render(pipe, spec, prompt, s, steps=steps, guidance=guidance, max_text_length=max_len,
                        width=width, height=height, frames=frames)
        path = write_sample(pixels, spec, out / f"sample-{i:04d}", fps)
        records.append(SampleRecord(
            index=i, prompt=prompt, seed=s, path=str(path),
            adapter=info.source if info else None, adapter_sha256=info.sha256 if info else None,
            adapter_scale=scale if info else None,
            adapter_rank=value_counts(info.ranks) if info else None,
            adapter_alpha=value_counts(info.alphas) if info else None,
            output_sha256=pixels_sha256(pixels), seconds=round(time.perf_counter() - start, 4)))
    with open(out / "samples.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    return records


def render(pipe: Any, spec: ModelSpec, prompt: str, seed: int, *, steps: int, guidance: float,
           max_text_length: int, width: int, height: int, frames: int) -> np.ndarray:
    """One sample as uint8 pixels: (F, H, W, 3) for video, (H, W, 3) for images.

    The generator is a fresh CPU ``torch.Generator`` seeded with ``seed``: diffusers draws the
    initial noise on it (on CPU, then moves it), so the noise is the same on any device and
    does not depend on what this process generated before.
    """
    result = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed),
                  num_inference_steps=steps, guidance_scale=guidance,
                  max_sequence_length=max_text_length, **spec.sample_kwargs(width, height, frames))
    return to_uint8(result.frames[0] if spec.modality == "video" else result.images[0])


def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 of the raw uint8 output, before any lossy encoding: compares samples across runs."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def write_sample(pixels: np.ndarray, spec: ModelSpec, stem: Path, fps: int) -> Path:
    """``stem``.mp4 (video) or ``stem``.png (image)."""
    if spec.modality == "video":
        return write_mp4(pixels, stem.with_suffix(".mp4"), fps=fps)
    return write_png(pixels, stem.with_suffix(".png"))
