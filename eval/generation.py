"""Plan and run generation: manifest -> pending samples -> tasks -> workers -> records.

The plan is pure (no model loaded): it resolves variants and prompts, writes ``eval.json`` and
``manifest.jsonl``, and lists the samples still to do. A sample counts as done only when its
record exists and matches the plan (seed, prompt, adapter sha256, sampling settings) and its
media file has the recorded sha256, so re-running finishes an interrupted eval and redoes
anything that changed, never trusting a half-written file.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

from pydantic import ValidationError

from training.config import ConfigError, format_errors
from training.console import progress as progress_bar
from training.fsio import sha256_file, sha256_json
from training.generate import SamplingSettings
from training.models import spec_for_folder
from training.models.base import CARD_FIELDS
from training.outputs import check_writable_dir
from training.precision import ComponentDtypes

from .config import EvalConfig
from .manifest import EvalInfo, EvalLayout, ManifestRow, build_manifest, write_json_atomic, write_jsonl
from .prompts import Prompt, check_lengths, load_prompts, token_counts
from .variants import Variant, resolve_variants
from .worker import SampleWorker, TaskResult, WorkerSettings

log = logging.getLogger("lorabench.eval")

#: most samples per task: small enough to balance workers and show progress, large enough
#: that the adapter switch (load + proof) is amortised.
MAX_CHUNK = 8


@dataclass
class Task:
    variant: Variant
    rows: list[ManifestRow]   # all of ``variant``


@dataclass
class Plan:
    cfg: EvalConfig
    layout: EvalLayout
    info: EvalInfo            # what eval.json holds: the results are made from it, not from the file
    rows: list[ManifestRow]
    settings: WorkerSettings
    done: int = 0
    redo: dict[str, int] = field(default_factory=dict)   # reason -> count of stale samples redone
    tasks: list[Task] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # host/device/threads of each worker seen

    @property
    def variants(self) -> list[Variant]:
        return self.info.variants

    @property
    def pending(self) -> int:
        return sum(len(t.rows) for t in self.tasks)


class Executor(Protocol):
    def __call__(self, plan: Plan, on_done: Callable[[TaskResult], None]) -> None:
        """Run every task of ``plan``; call ``on_done`` with each task's result as it finishes."""


def resolve_sampling(cfg: EvalConfig, spec: Any) -> tuple[EvalConfig, SamplingSettings]:
    """``cfg`` with every null sampling field set to the model card's value, and the settings.

    The resolved config is what eval.json records and what the metrics stage reads, so a
    re-run or ``eval metrics --from`` never depends on defaults that may change.
    """
    s, m = cfg.sampling, cfg.model
    settings = SamplingSettings.resolve(
        spec, m.path, dtypes=ComponentDtypes.resolve(m.dtype, m.vae_dtype, m.text_encoder_dtype), offload=s.offload,
        width=s.width, height=s.height, frames=s.frames, fps=s.fps, steps=s.steps, guidance=s.guidance,
        shift=s.shift, negative_prompt=s.negative_prompt, max_text_length=s.max_text_length)
    filled = {k: getattr(settings, k) for k in (*CARD_FIELDS, "max_text_length")}
    data = cfg.to_dict()
    data["sampling"].update(filled)
    try:  # re-validate: e.g. metrics.fvd.frames against the now-known frame count
        return EvalConfig.model_validate(data), settings
    except ValidationError as e:
        raise ConfigError(format_errors(e, f"{cfg.name} (sampling defaults from {settings.defaults_source})",
                                        EvalConfig)) from None


def make_plan(cfg: EvalConfig) -> Plan:
    """Everything decided before a model loads; writes eval.json and manifest.jsonl."""
    check_writable_dir(cfg.out_dir, "output_dir")
    spec = spec_for_folder(cfg.model.path)
    spec.validate_folder(cfg.model.path)
    cfg, sampling = resolve_sampling(cfg, spec)
    s = cfg.sampling
    problems = spec.geometry(cfg.model.path).check(s.width, s.height, s.frames)
    if problems:
        raise ConfigError("invalid sampling shape:\n  " + "\n  ".join(p.replace("data.", "sampling.") for p in problems))
    from .metrics.pipeline import check_inputs
    check_inputs(cfg)
    variants = resolve_variants(cfg)
    for v in variants:
        for w in v.warnings:
            log.warning("variant %s: %s", v.name, w)
    max_len = sampling.max_text_length
    prompts = load_prompts(cfg.prompts.file, cfg.prompts.limit)
    limits = spec.text_limits(max_len)
    # The negative prompt is counted with the prompts (one tokenizer load): it would be cut too.
    negative = [Prompt("negative", sampling.negative_prompt)] if sampling.uses_negative_prompt else []
    counts = token_counts(cfg.model.path, limits, prompts + negative)
    prompts, skipped, truncated = check_lengths(prompts, {sub: n[:len(prompts)] for sub, n in counts.items()},
                                                limits, cfg.prompts.too_long)
    if negative:
        over = [f"{sub}: {n[-1]} tokens > {limits[sub]}" for sub, n in counts.items() if n[-1] > limits[sub]]
        if over:
            raise ConfigError(f"sampling.negative_prompt is longer than the text encoder keeps ({'; '.join(over)}); "
                              "shorten it or raise sampling.max_text_length")
    rows = build_manifest(prompts, variants, cfg.prompts.samples_per_prompt, cfg.seed)
    settings_data = {"model": str(Path(cfg.model.path).resolve()), "revision": cfg.model.revision,
                     **sampling.to_dict()}
    settings_data.pop("defaults_source")  # provenance only: the values themselves are hashed
    settings_data.pop("offload")          # where components live does not change pixels
    settings = WorkerSettings(
        model_path=str(Path(cfg.model.path).resolve()), sampling=sampling,
        device="cuda" if cfg.parallel.use_gpu else s.device, threads=cfg.parallel.threads,
        settings_hash=sha256_json(settings_data))
    layout = EvalLayout(cfg.out_dir.resolve())
    info = EvalInfo(config=cfg.to_dict(), config_hash=sha256_json(cfg.to_dict()),
                    settings_hash=settings.settings_hash, sampling=sampling.to_dict(), variants=variants,
                    skipped_prompts=skipped, truncated_prompts=truncated, family=spec.name, modality=spec.modality)
    plan = Plan(cfg, layout, info, rows, settings)
    write_json_atomic(layout.info, info.to_dict())
    write_jsonl(layout.manifest, (r.to_dict() for r in rows))
    _schedule(plan, spec.modality)
    return plan


def _schedule(plan: Plan, modality: str) -> None:
    ext = "mp4" if modality == "video" else "png"
    by_variant = {v.name: v for v in plan.variants}
    pending: dict[str, list[ManifestRow]] = {}
    for row in plan.rows:
        reason = _stale(plan, by_variant[row.variant], row, ext)
        if reason is None:
            plan.done += 1
            continue
        if reason != "missing":
            plan.redo[reason] = plan.redo.get(reason, 0) + 1
        pending.setdefault(row.variant, []).append(row)
    workers = plan.cfg.parallel.num_workers
    for v in plan.variants:  # manifest order: a worker keeps one adapter for consecutive tasks
        todo = pending.get(v.name, [])
        if not todo:
            continue
        size = max(1, min(MAX_CHUNK, math.ceil(len(todo) / workers)))
        plan.tasks += [Task(v, todo[i:i + size]) for i in range(0, len(todo), size)]


def _stale(plan: Plan, variant: Variant, row: ManifestRow, ext: str) -> Optional[str]:
    """None when the sample on disk is exactly this row's; else why it must be (re)made."""
    rec_path = plan.layout.record(variant.name, row.sample_id)
    if not rec_path.is_file():
        return "missing"
    try:
        rec = json.loads(rec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "corrupt record"
    checks = {"seed": row.seed, "prompt": row.prompt, "adapter_sha256": variant.sha256,
              "adapter_scale": variant.scale, "settings_hash": plan.settings.settings_hash}
    for key, want in checks.items():
        if rec.get(key) != want:
            return f"changed {key}"
    media = plan.layout.media(variant.name, row.sample_id, ext)
    if not media.is_file() or sha256_file(media) != rec.get("file_sha256"):
        return "media missing or altered"
    return None


def run_local(plan: Plan, on_done: Callable[[TaskResult], None]) -> None:
    """The in-process executor (parallel.backend=none): one worker, tasks in order."""
    if not plan.tasks:
        return
    worker = SampleWorker(plan.settings, str(plan.layout.root))
    for task in plan.tasks:
        on_done(worker.run(task.variant, task.rows))


def generate(plan: Plan, executor: Executor = run_local, progress: bool = True) -> list[dict[str, Any]]:
    """Run the plan's tasks and merge every record into records.jsonl; returns the records."""
    if plan.redo:
        log.info("redoing %d stale samples: %s", sum(plan.redo.values()),
                 ", ".join(f"{k}={n}" for k, n in plan.redo.items()))
    log.info("%d samples in the manifest: %d already done, %d to generate in %d tasks",
             len(plan.rows), plan.done, plan.pending, len(plan.tasks))
    bar = progress_bar(total=plan.pending, desc="generate", unit="sample", disable=not progress or not plan.pending)

    def on_done(result: TaskResult) -> None:
        if result.proof:
            write_json_atomic(plan.layout.proof(result.proof["variant"]), result.proof)
        if result.worker and result.worker not in plan.workers:
            plan.workers.append(result.worker)
        bar.update(len(result.records))

    try:
        executor(plan, on_done)
    finally:
        bar.close()
    return collect_records(plan.layout, plan.rows, plan.variants)


def collect_records(layout: EvalLayout, rows: Iterable[ManifestRow], variants: list[Variant]) -> list[dict[str, Any]]:
    """Every sample's record, in manifest order, also written to records.jsonl."""
    order = {v.name: i for i, v in enumerate(variants)}
    records = []
    for row in sorted(rows, key=lambda r: (order[r.variant], r.sample_id)):
        path = layout.record(row.variant, row.sample_id)
        if not path.is_file():
            raise RuntimeError(f"sample {row.variant}/{row.sample_id} has no record after generation "
                               f"({path}); re-run the eval to finish it")
        records.append(json.loads(path.read_text()))
    write_jsonl(layout.records, records)
    return records
