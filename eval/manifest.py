"""The eval folder layout and the manifest: which sample, of which variant, with which seed.

    evals/<name>/
      eval.json                  config, its hash, variants (adapter sha256s), skipped prompts
      manifest.jsonl             sample_id, prompt_id, prompt, rep, variant, seed (one row per sample)
      variants/<variant>.json    the proof each adapter was applied (load report + effect)
      samples/<variant>/<sample_id>.mp4|png   + <sample_id>.json (the sample's record)
      records.jsonl              every record, sorted by (variant, sample_id)
      features/<extractor>/<variant>.safetensors   per-sample features (+ sample ids)
      results.json, results.md

A seed is ``sample_seed(seed, prompt_id, rep)``: the same for every variant, so base and LoRA
are compared on the same noise, and independent of worker count and order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from training import fsio
from training.seeding import sample_seed

from .prompts import Prompt, PromptSkip
from .variants import Variant


@dataclass(frozen=True)
class ManifestRow:
    sample_id: str
    prompt_id: str
    prompt: str
    rep: int
    variant: str
    seed: int
    reference: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_id(prompt_id: str, rep: int) -> str:
    return f"{prompt_id}-r{rep:03d}"


def build_manifest(prompts: list[Prompt], variants: list[Variant], samples_per_prompt: int,
                   seed: int) -> list[ManifestRow]:
    """Rows ordered by variant, then prompt, then repeat (the order of the files on disk)."""
    return [ManifestRow(sample_id(p.id, rep), p.id, p.text, rep, v.name, sample_seed(seed, p.id, rep), p.reference)
            for v in variants for p in prompts for rep in range(samples_per_prompt)]


@dataclass(frozen=True)
class EvalLayout:
    root: Path

    @property
    def info(self) -> Path:
        return self.root / "eval.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def records(self) -> Path:
        return self.root / "records.jsonl"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "results.md"

    def proof(self, variant: str) -> Path:
        return self.root / "variants" / f"{variant}.json"

    def sample_dir(self, variant: str) -> Path:
        return self.root / "samples" / variant

    def media(self, variant: str, sid: str, ext: str) -> Path:
        return self.sample_dir(variant) / f"{sid}.{ext}"

    def record(self, variant: str, sid: str) -> Path:
        return self.sample_dir(variant) / f"{sid}.json"

    def features(self, extractor: str, group: str) -> Path:
        return self.root / "features" / extractor / f"{group}.safetensors"


@dataclass
class EvalInfo:
    """``eval.json``: what the plan decided before any model loaded; the results and
    ``eval metrics --from DIR`` read it back."""

    config: dict[str, Any]           # the resolved config (sampling defaults filled in)
    config_hash: str
    settings_hash: str               # of everything that changes pixels
    sampling: dict[str, Any]
    variants: list[Variant]
    skipped_prompts: list[PromptSkip]
    truncated_prompts: list[PromptSkip]
    family: Optional[str]
    modality: str

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "config_hash": self.config_hash, "settings_hash": self.settings_hash,
                "sampling": self.sampling, "variants": [v.to_dict() for v in self.variants],
                "skipped_prompts": [vars(p) for p in self.skipped_prompts],
                "truncated_prompts": [vars(p) for p in self.truncated_prompts],
                "family": self.family, "modality": self.modality}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalInfo":
        return cls(config=d["config"], config_hash=d["config_hash"], settings_hash=d["settings_hash"],
                   sampling=d.get("sampling", {}), variants=[Variant.from_dict(v) for v in d["variants"]],
                   skipped_prompts=[PromptSkip(**p) for p in d.get("skipped_prompts", [])],
                   truncated_prompts=[PromptSkip(**p) for p in d.get("truncated_prompts", [])],
                   family=d.get("family"), modality=d["modality"])


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename, so a crash never leaves a half-written JSON a resumed eval would trust."""
    fsio.atomic_write_json(path, data, indent=1, sort_keys=True)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    fsio.write_jsonl(path, list(rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file the eval wrote whole (atomically): any damage, even to the
    last line, happened after the fact and is an error naming ``file:line``."""
    contents = fsio.read_jsonl(path)
    if contents.torn is not None:
        line = len(contents.records) + 1
        fragment = contents.torn.decode("utf-8", errors="replace")[:60]
        raise fsio.CorruptFileError(f"{path}:{line}: not valid JSON ({fragment!r}...); this file is written whole, "
                                    "so it was damaged afterwards: restore it or delete the eval folder to start over")
    return contents.records
