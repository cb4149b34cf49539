"""Eval prompts: ids that key samples and seeds, optional paired references, token-limit checks."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from training.config import ConfigError
from training.data.captions import long_caption_verdict
from training.generate import token_lengths

log = logging.getLogger("lorabench.eval")

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Prompt:
    id: str                           # keys the sample files and the seed; stable across edits of other lines
    text: str
    reference: Optional[str] = None   # paired real media (absolute path) for PSNR/SSIM


@dataclass
class PromptSkip:
    id: str
    reason: str


def load_prompts(path: str | Path, limit: Optional[int] = None) -> list[Prompt]:
    """Read ``.txt`` (one prompt per line, '#' comments) or ``.jsonl`` ({"prompt", "id"?, "reference"?}).

    Without an explicit id a prompt is ``p<line index>``: give jsonl ids when the file will be
    edited, so that inserting a line does not change every later prompt's seed.
    """
    from training.generate import read_prompt_rows

    p = Path(path)
    try:
        rows = read_prompt_rows(p)
    except FileNotFoundError:
        raise ConfigError(f"prompts.file not found: {p} (write one prompt per line, or a .jsonl with "
                          "{\"prompt\": ...} objects)") from None
    except ValueError as e:
        raise ConfigError(f"prompts.file: {e}") from None
    out: list[Prompt] = []
    seen: dict[str, int] = {}
    for n, fields in rows:
        pid, ref = str(fields.get("id", f"p{len(out):05d}")), None
        if fields.get("reference") is not None:
            ref_path = (p.parent / str(fields["reference"])).resolve()
            if not ref_path.is_file():
                raise ConfigError(f"{p}:{n}: reference file {ref_path} not found")
            ref = str(ref_path)
        if not _SAFE_ID.match(pid):
            raise ConfigError(f"{p}:{n}: prompt id {pid!r} must be 1-128 letters, digits, '.', '_' or '-' "
                              "(it names the sample files)")
        if pid in seen:
            raise ConfigError(f"{p}:{n}: prompt id {pid!r} already used on line {seen[pid]}")
        seen[pid] = n
        out.append(Prompt(pid, fields["prompt"], ref))
        if limit is not None and len(out) >= limit:
            break
    return out


def token_counts(model_dir: str | Path, limits: dict[str, int], prompts: list[Prompt]) -> dict[str, list[int]]:
    """Tokens per prompt (special tokens included) for each tokenizer subfolder in ``limits``."""
    return token_lengths(model_dir, limits, [p.text for p in prompts])


def check_lengths(prompts: list[Prompt], counts: dict[str, list[int]], limits: dict[str, int],
                  policy: Literal["error", "skip", "truncate"]
                  ) -> tuple[list[Prompt], list[PromptSkip], list[PromptSkip]]:
    """(kept, skipped, truncated): prompts over the encoder limit are refused (``error``), left
    out (``skip``) or kept and cut by the pipeline (``truncate``), and always counted.

    The decision is training's ``data.long_captions`` one (training.data.captions), so a
    prompt is judged as a caption would be.
    """
    kept, skipped, truncated = [], [], []
    for i, prompt in enumerate(prompts):
        action, over_detail = long_caption_verdict({sub: counts[sub][i] for sub in limits}, limits, policy)
        if action == "keep":
            kept.append(prompt)
            continue
        over = [f"{sub}: {n} tokens > {lim}" for sub, (n, lim) in over_detail.items()]
        reason = "too_long (" + "; ".join(over) + ")"
        if action == "truncate":
            log.warning("prompt %s is cut by the text encoder (prompts.too_long=truncate): %s", prompt.id, reason)
            truncated.append(PromptSkip(prompt.id, reason))
            kept.append(prompt)
            continue
        if action == "error":
            raise ConfigError(
                f"prompt {prompt.id!r} ({prompt.text[:60]!r}...) is over the text encoder limit: {'; '.join(over)}. "
                "The pipeline would truncate it silently. Shorten it, raise sampling.max_text_length (if the "
                "model was trained with that length), or set prompts.too_long=skip (leave it out) or truncate "
                "(keep what the encoder reads), both counted in eval.json.")
        log.warning("prompt %s left out of every variant: %s", prompt.id, reason)
        skipped.append(PromptSkip(prompt.id, reason))
    if not kept:
        raise ConfigError(f"all {len(prompts)} prompts are over the text encoder limit {limits}")
    return kept, skipped, truncated
