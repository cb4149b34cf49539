"""One benchmark run as the store records it: built from a finished training run folder and the
``results.json`` of its eval, plus the provenance that makes two runs comparable.

Provenance: git sha and dirty flag, config hash and the resolved configs, the base model's
component digests and each adapter's sha256, a hash of the dataset's shard list (names and
sizes: hashing terabytes of tars every night is not affordable; a replaced shard changes its
size or name in practice), seeds, library versions and hardware. Training performance comes
from the run's metrics log: median samples/s and step time (the first steps, which include
compilation and allocator warm-up, left out), each rank's peak memory, and an MFU estimate from
the denoiser's FLOPs per sample (:mod:`training.flops`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

from training.config import RunConfig
from training.fsio import read_jsonl, sha256_json
from training.layout import RunLayout

from .store import RunRecord

#: steps left out of the throughput medians (compilation, allocator and data warm-up)
WARMUP_STEPS = 2


def dataset_hash(cfg: RunConfig) -> Optional[str]:
    """sha256 over the training shards' names and sizes (None when they cannot be listed)."""
    from training.data.shards import list_shards
    try:
        urls = list_shards(cfg.data.shards)
    except (FileNotFoundError, ValueError):
        return None
    return sha256_json([[Path(u).name, Path(u).stat().st_size if Path(u).is_file() else None] for u in urls])


def model_digests(cfg: RunConfig) -> dict[str, str]:
    """Each folder of the model's model_index.json (weights, and the scheduler and tokenizer that
    shape sampling too): a digest of its file names and sha256s, remembered between runs."""
    from training.cache.settings import default_memo, folder_digest
    path = Path(cfg.model.path)
    index = json.loads((path / "model_index.json").read_text())
    return {name: folder_digest(path / name, default_memo()) for name in sorted(index)
            if not name.startswith("_") and (path / name).is_dir()}


def training_perf(rows: list[dict[str, Any]], cfg: RunConfig, world_size: int, peak_per_device: Optional[float],
                  device_name: Optional[str]) -> dict[str, Any]:
    """Throughput, step time, peak memory per rank and MFU of a finished run, from its metrics log's rows."""
    from training.flops import mfu, training_flops
    steady = [r for r in rows if r["step"] > WARMUP_STEPS] or rows
    sps = statistics.median(r["samples_per_s"] for r in steady) if steady else None
    step_s = statistics.median(r["step_seconds"] for r in steady) if steady else None
    peaks: dict[str, int] = {}
    for r in rows:
        per_rank = {k.rsplit("rank", 1)[1]: v for k, v in r.items() if k.startswith("peak_memory_bytes_rank")}
        if not per_rank and "peak_memory_bytes" in r:
            per_rank = {"0": r["peak_memory_bytes"]}
        for rank, b in per_rank.items():
            peaks[rank] = max(peaks.get(rank, 0), int(b))
    perf: dict[str, Any] = {"samples_per_s": sps, "step_seconds": step_s, "peak_memory_bytes": peaks,
                            "world_size": world_size, "steps": len(rows), "warmup_steps_left_out": WARMUP_STEPS,
                            "device": device_name, "mfu": None}
    try:
        flops = training_flops(cfg)
    except Exception as e:  # noqa: BLE001 - an uncountable model costs the MFU, not the record
        perf["mfu_note"] = f"FLOPs not counted: {type(e).__name__}: {e}"
        return perf
    perf["flops_per_sample"] = flops.per_sample
    perf["mfu"] = mfu(flops.per_sample, sps or 0.0, world_size, peak_per_device)
    perf["mfu_note"] = (f"model FLOPs per sample {flops.per_sample:.3e} (forward {flops.forward:.3e} + backward "
                        f"through the frozen base {flops.backward:.3e}, meta-device count) x samples/s over "
                        + (f"{world_size} x {peak_per_device:.3g} FLOP/s peak" if peak_per_device else
                           f"an unknown peak ({device_name or 'no accelerator'}): set peak_tflops in the bench config"))
    return perf


def _variants(eval_body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, v in eval_body["variants"].items():
        out.append({"name": name, "step": v.get("step"), "scale": v.get("scale"), "group": v.get("group"),
                    "sha256": v.get("sha256"),
                    "metrics": {k: {"value": m.get("value"), "ci95": m.get("ci95"), "n": m.get("n"),
                                    "n_ref": m.get("n_ref")} for k, m in v.get("metrics", {}).items()},
                    "delta_vs_base": v.get("delta_vs_base") or {}, "delta_vs_previous": v.get("delta_vs_previous")})
    return out


def _samples(eval_body: dict[str, Any], eval_dir: Path) -> list[dict[str, Any]]:
    kind = "video" if eval_body["model"].get("modality") == "video" else "image"
    return [{"variant": s["variant"], "sample_id": s["sample_id"], "prompt_id": s.get("prompt_id"),
             "prompt": s.get("prompt"), "seed": s.get("seed"), "media": str((eval_dir / s["path"]).resolve()),
             "kind": kind} for s in eval_body["samples"] if s.get("path")]


def comparable_config(bench: dict[str, Any], train: dict[str, Any], evalc: dict[str, Any]) -> dict[str, Any]:
    """The configs without where this run's files went (a new folder every night), so two nights
    with the same settings have the same config hash."""
    train = {k: v for k, v in train.items() if k not in ("output_dir", "run_name")}
    evalc = {k: v for k, v in evalc.items() if k != "output_dir"}
    evalc["variants"] = {k: v for k, v in evalc.get("variants", {}).items() if k != "adapters"}
    return {"bench": bench, "train": train, "eval": evalc}


def build_record(*, run_id: str, bench: str, bench_config: dict[str, Any], started: str, finished: str,
                 train_cfg: RunConfig, train_dir: Path, eval_body: dict[str, Any], eval_dir: Path,
                 world_size: int, peak_per_device: Optional[float] = None) -> RunRecord:
    layout = RunLayout(Path(train_dir))
    result = json.loads(layout.result.read_text())
    train = train_cfg.model_dump(mode="json")
    config = comparable_config(bench_config, train, eval_body["config"])
    variants = _variants(eval_body)
    # From the metrics log, not result.json: after a resume result.json holds only the steps of
    # the last invocation, the log holds every step (truncated to the checkpoint on resume).
    rows = [r for r in read_jsonl(layout.metrics).records if isinstance(r, dict) and "step" in r]
    losses = sorted({int(r["step"]): float(r["loss"]) for r in rows if "loss" in r}.items())
    provenance = {
        "git": eval_body.get("git", {}), "model": {"family": train_cfg.model.family, "path": str(train_cfg.model.path),
                                                   "sha256": model_digests(train_cfg)},
        "adapters": {v["name"]: v["sha256"] for v in variants if v["sha256"]},
        "dataset_hash": dataset_hash(train_cfg), "dataset": str(train_cfg.data.shards),
        "seeds": {"train": train_cfg.seed, "eval": eval_body.get("seed")},
        "libraries": eval_body.get("libraries", {}), "hardware": eval_body.get("hardware", {}),
        "train_engine": result.get("engine"), "train_data": result.get("skipped"),
        "eval_reference": eval_body.get("reference"),
    }
    # The training ranks' accelerator, as rank 0 wrote it in result.json (the process recording
    # the run, a Ray head, often has none).
    device_name = result.get("device_name")
    from training.flops import peak_flops
    peak_per_device = peak_per_device or peak_flops(device_name)
    return RunRecord(
        id=run_id, bench=bench, started=started, finished=finished, config_hash=sha256_json(config),
        config={"bench": bench_config, "train": train, "eval": eval_body["config"]},
        provenance=provenance,
        perf=training_perf(rows, train_cfg, world_size, peak_per_device, device_name),
        paths={"train": str(Path(train_dir).resolve()), "eval": str(Path(eval_dir).resolve())},
        variants=variants, losses=losses, samples=_samples(eval_body, Path(eval_dir)))


def site_data(records: list[RunRecord], directions: dict[str, int], generated: str) -> dict[str, Any]:
    """The leaderboard page's data (eval.leaderboard.render), newest run first."""
    runs = []
    for r in records:
        p = r.provenance
        runs.append({
            "id": r.id, "bench": r.bench, "status": r.status, "started": r.started, "finished": r.finished,
            "git": p.get("git", {}), "config_hash": r.config_hash, "config": r.config, "model": p.get("model", {}),
            "adapters": p.get("adapters", {}), "dataset_hash": p.get("dataset_hash"), "seeds": p.get("seeds", {}),
            "libraries": p.get("libraries", {}), "hardware": _hardware(p.get("hardware", {})), "perf": r.perf,
            "loss": [[s, x] for s, x in r.losses],
            "variants": [{**{k: v[k] for k in ("name", "step", "scale", "group")},
                          "metrics": {k: _interval(m) for k, m in v["metrics"].items()},
                          "delta_vs_base": {k: _interval(d) for k, d in v["delta_vs_base"].items()},
                          "delta_vs_previous": None if not v["delta_vs_previous"] else {
                              "against": v["delta_vs_previous"]["against"],
                              "metrics": {k: _interval(d) for k, d in v["delta_vs_previous"]["metrics"].items()}}}
                         for v in r.variants],
            # Seeds are 63-bit: as JSON numbers JavaScript would round them (6045968601703053xxx
            # shown as ...054000), so the page gets them as text.
            "samples": [{**x, "seed": None if x.get("seed") is None else str(x["seed"])} for x in r.samples],
            "alerts": [{"metric": a["key"].rsplit("/", 1)[-1], "variant": a["key"].rsplit("/", 1)[0], **a}
                       for a in r.alerts]})
    return {"generated": generated, "runs": runs, "directions": directions}


def _interval(d: dict[str, Any]) -> dict[str, Any]:
    lo, hi = d.get("ci95") or (None, None)
    out = {"value": d.get("value"), "lo": lo, "hi": hi}
    if "n" in d:
        out["n"] = d["n"]
    if "significant" in d:
        out["significant"] = d["significant"]
    return out


def _hardware(h: dict[str, Any]) -> dict[str, Any]:
    return {"platform": h.get("platform"), "python": h.get("python"), "cpu_count": h.get("cpu_count"),
            "gpus": h.get("driver_gpus") or [], "workers": h.get("workers", [])}
