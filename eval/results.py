"""results.json (what ran, on what, and every number with its interval) and the Markdown table.

The metadata answers "can these two numbers be compared?": git sha, config hash, the base
model's config hash, every adapter's sha256, seeds, hardware and library versions. Deltas
are always against the base variant on the same manifest (same prompts, same seeds).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from training.checkpoint import config_hash
from training.fsio import atomic_write_text

from .config import EvalConfig, load_eval_config
from .manifest import EvalInfo, EvalLayout, read_jsonl, write_json_atomic
from .metrics.base import MetricResult
from .metrics.paired import delta_text

if TYPE_CHECKING:
    from .generation import Plan
    from .metrics.pipeline import EvalMetrics

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "torchmetrics", "ray", "numpy", "scipy", "av",
             "safetensors", "accelerate", "deepspeed")


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(dirty) if dirty is not None else None}


def library_versions() -> dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def hardware(workers: list[dict[str, Any]]) -> dict[str, Any]:
    import torch
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "driver_gpus": gpus, "workers": workers}


def model_identity(path: str, revision: Optional[str]) -> dict[str, Any]:
    p = Path(path)
    tr = next((p / d / "config.json" for d in ("transformer", "unet") if (p / d / "config.json").is_file()), None)
    return {"path": str(p.resolve()), "revision": revision,
            "denoiser_config_sha256": config_hash(tr) if tr else None}


def finish(plan: Plan, records: list[dict[str, Any]], progress: bool = True) -> dict[str, Any]:
    """After generation: metrics (if enabled), results.json and results.md; returns the body."""
    return write_results(plan.cfg, plan.layout, plan.info, records, plan.workers, progress=progress)


def _metrics(cfg: EvalConfig, layout: EvalLayout, info: EvalInfo, records: list[dict[str, Any]],
             progress: bool) -> EvalMetrics:
    from .metrics.pipeline import EvalMetrics, compute_metrics
    if not cfg.metrics.enabled:
        return EvalMetrics()
    return compute_metrics(cfg, layout, info.modality, info.variants, records, progress=progress)


def write_results(cfg: EvalConfig, layout: EvalLayout, info: EvalInfo, records: list[dict[str, Any]],
                  workers: list[dict[str, Any]], progress: bool = True) -> dict[str, Any]:
    metrics = _metrics(cfg, layout, info, records, progress)
    per_variant = {}
    for v in info.variants:
        vm = metrics.variants.get(v.name, {})
        proof = layout.proof(v.name)
        per_variant[v.name] = {
            "adapter": v.adapter, "sha256": v.sha256, "scale": v.scale, "step": v.step,
            "group": v.group, "warnings": list(v.warnings),
            "proof": json.loads(proof.read_text()) if proof.is_file() else None,
            "n_samples": sum(1 for r in records if r["variant"] == v.name),
            "metrics": {k: m.to_dict() for k, m in vm.items()},
            # Paired over the same prompts and seeds, each with its own interval (metrics.paired)
            "delta_vs_base": metrics.deltas.get(v.name, {}).get("vs_base", {}).get("metrics", {}),
            "delta_vs_previous": metrics.deltas.get(v.name, {}).get("vs_previous")}
    samples = [dict(r, metrics=metrics.per_sample.get(r["variant"], {}).get(r["sample_id"], {})) for r in records]
    body = {
        "schema": SCHEMA_VERSION, "eval": cfg.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(), "config_hash": info.config_hash, "settings_hash": info.settings_hash,
        "config": cfg.to_dict(), "model": {**model_identity(cfg.model.path, cfg.model.revision),
                                           "family": info.family, "modality": info.modality},
        "seed": cfg.seed, "samples_per_prompt": cfg.prompts.samples_per_prompt,
        "skipped_prompts": [vars(p) for p in info.skipped_prompts],
        "hardware": hardware(workers), "libraries": library_versions(),
        "reference": metrics.reference, "variants": per_variant, "samples": samples}
    write_json_atomic(layout.results, body)
    atomic_write_text(layout.report, markdown(body))
    return body


def recompute(eval_dir: str | Path, overrides: Optional[list[str]] = None, progress: bool = True) -> dict[str, Any]:
    """``lorabench eval metrics --from DIR``: metrics again from the saved samples/features."""
    layout = EvalLayout(Path(eval_dir).resolve())
    if not layout.info.is_file() or not layout.records.is_file():
        from training.config import ConfigError
        raise ConfigError(f"{layout.root} is not a finished eval folder (needs eval.json and records.jsonl); "
                          "run the eval first: lorabench eval CONFIG")
    info = EvalInfo.from_dict(json.loads(layout.info.read_text()))
    cfg = load_eval_config(None, overrides, base=info.config)
    old = json.loads(layout.results.read_text()) if layout.results.is_file() else {}
    return write_results(cfg, layout, info, read_jsonl(layout.records),
                         old.get("hardware", {}).get("workers", []), progress=progress)


# ----------------------------------------------------------------------------- presentation


def _cell(m: dict[str, Any], delta: Optional[dict[str, Any]]) -> str:
    if m["value"] is None:
        return "skipped"
    s = f"{m['value']:.4g}"
    if m.get("ci95"):
        s += f" [{m['ci95'][0]:.3g}, {m['ci95'][1]:.3g}]"
    if delta is not None and delta.get("value") is not None:
        s += f" ({delta_text(delta)})"
    if m.get("warnings"):
        s += " ⚠"
    return s


def markdown(body: dict[str, Any]) -> str:
    variants = body["variants"]
    names = sorted({k for v in variants.values() for k in v["metrics"]})
    lines = [f"# Eval {body['eval']}", "",
             f"git {(body['git'].get('sha') or 'unknown')[:12]}{' (dirty)' if body['git'].get('dirty') else ''} · "
             f"config {body['config_hash'][:12]} · model {body['model']['path']} · seed {body['seed']} · "
             f"{body['samples_per_prompt']} sample(s) per prompt", "",
             "Values with 95% bootstrap intervals; (±) is the difference from `base` on the same prompts "
             "and seeds, with its paired 95% interval (bootstrap over prompts); n.s.: the interval contains 0, "
             "not significant; ⚠ marks a metric with warnings (below).", ""]
    lines.append("| variant | step | scale | n | " + " | ".join(names) + " |")
    lines.append("|---" * (4 + len(names)) + "|")
    for name, v in variants.items():
        deltas = v.get("delta_vs_base", {})
        cells = [_cell(v["metrics"][k], deltas.get(k)) if k in v["metrics"] else "-" for k in names]
        lines.append(f"| {name} | {v['step'] if v['step'] is not None else '-'} | "
                     f"{v['scale'] if v['scale'] is not None else '-'} | {v['n_samples']} | " + " | ".join(cells) + " |")
    steps = [f"- {name} vs {v['delta_vs_previous']['against']}: " + ", ".join(
        f"{k} {delta_text(d)}" for k, d in sorted(v["delta_vs_previous"]["metrics"].items()))
        for name, v in variants.items() if v.get("delta_vs_previous")]
    if steps:
        lines += ["", "## Each checkpoint vs the one before (paired, same prompts and seeds)", *steps]
    notes = [f"- {name}: {w}" for name, v in variants.items() for w in v.get("warnings", [])]
    # The same warning for every variant (sample counts, random weights) is listed once.
    seen: dict[str, list[str]] = {}
    for name, v in variants.items():
        for k, m in v["metrics"].items():
            for w in m.get("warnings", []) + ([f"{k}: skipped: {m['skipped']}"] if m.get("skipped") else []):
                seen.setdefault(w, []).append(name)
    notes += [f"- {w}" + ("" if len(who) == len(variants) else f" ({', '.join(who)})") for w, who in seen.items()]
    if body.get("skipped_prompts"):
        notes.append(f"- {len(body['skipped_prompts'])} prompt(s) left out of every variant (too long): "
                     + ", ".join(p["id"] for p in body["skipped_prompts"][:10]))
    ref = body.get("reference")
    if ref:
        notes.append(f"- reference: {ref.get('n', 0)} samples from {ref.get('shards')}; {ref.get('skipped', '')}")
    how: dict[str, dict[str, Any]] = {}
    for v in variants.values():
        for k, m in v["metrics"].items():
            if m.get("details") and k not in how:  # per-variant counts and spreads stay in results.json
                how[k] = {d: x for d, x in m["details"].items()
                          if not d.startswith("n_") and d not in ("std", "bootstrap_median", "ci95_percentile_raw")}
    if notes:
        lines += ["", "## Notes", *notes]
    if how:
        lines += ["", "## How each metric was computed", *[f"- {k}: `{json.dumps(d, sort_keys=True)}`"
                                                          for k, d in sorted(how.items())]]
    proofs = [f"- {n}: {v['proof']['summary']}; effect {v['proof']['effect_max_diff']:.3e}"
              for n, v in variants.items() if v.get("proof")]
    if proofs:
        lines += ["", "## Adapters (loaded completely and proven to change the output)", *proofs]
    return "\n".join(lines) + "\n"


def summary_text(body: dict[str, Any]) -> str:
    out = [f"eval {body['eval']}: {len(body['samples'])} samples, {len(body['variants'])} variant(s)"]
    for name, v in body["variants"].items():
        ms = "  ".join(str(MetricResult.from_dict(m)) for m in v["metrics"].values())
        out.append(f"  {name}: {ms or 'no metrics'}")
    return "\n".join(out)
