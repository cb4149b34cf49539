"""One generation worker: a resident pipeline that renders manifest rows for any variant.

No Ray here: ``cluster/eval.py`` wraps this class in an actor, and the in-process backend uses
it directly. Adapters are swapped on the resident base model (unload, load, prove) instead of
reloading the pipeline; the base weights are never modified by a LoRA, so unloading gives the
base model back exactly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from training.adapters import load_adapter, loaded_adapters, unload_adapter, verify_effect
from training.adapters.load import denoiser
from training.adapters.report import value_counts
from training.console import quiet_third_party
from training.fsio import atomic_write_bytes, sha256_bytes
from training.generate import SamplingSettings, load_sampling_pipeline, pixels_sha256, render
from training.media_io import encode_sample, media_extension
from training.models import spec_for_folder
from training.runtime import Precision, resolve_device

from .manifest import EvalLayout, ManifestRow, write_json_atomic
from .variants import Variant

log = logging.getLogger("lorabench.eval")


@dataclass
class WorkerSettings:
    model_path: str
    sampling: SamplingSettings   # size, fps, steps, guidance, shift, negative prompt, dtypes, offload
    device: str
    threads: Optional[int]
    settings_hash: str    # of everything that changes pixels: a record with another hash is redone


@dataclass
class TaskResult:
    """What a worker hands back for one task (rows of one variant)."""

    records: list[dict[str, Any]]                # each sample's record, also on disk next to its media
    worker: dict[str, Any]                       # host, pid, device, threads, load seconds
    proof: Optional[dict[str, Any]] = None       # the adapter's proof, when this task (re)loaded it


class SampleWorker:
    def __init__(self, settings: WorkerSettings, out_dir: str) -> None:
        if settings.threads:
            # CPU float reductions depend on the thread count: fix it so outputs do not depend
            # on how many cores the actor happened to get.
            torch.set_num_threads(settings.threads)
        self.s = settings
        quiet_third_party()  # every actor would repeat the library notices and loading bars
        self.layout = EvalLayout(Path(out_dir))
        self.spec = spec_for_folder(settings.model_path)
        self.device = resolve_device(settings.device)
        Precision.resolve(settings.sampling.dtypes.denoiser, self.device)  # fp16 needs CUDA, ...
        start = time.perf_counter()
        self.pipe = load_sampling_pipeline(self.spec, settings.model_path, settings.sampling, self.device)
        self.load_seconds = time.perf_counter() - start
        self.current: Optional[str] = None   # variant whose adapter (or none) is active
        self.ext = media_extension(self.spec.modality)

    def host(self) -> dict[str, Any]:
        import socket
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device),
                "threads": torch.get_num_threads(), "load_seconds": round(self.load_seconds, 3)}

    # ------------------------------------------------------------------ variants

    def activate(self, variant: Variant) -> Optional[dict[str, Any]]:
        """Make ``variant`` the active one; for an adapter, return the proof it is applied.

        Raises AdapterError (with the report table) when the adapter does not load completely
        or has no effect: no sample of that variant is generated then.
        """
        if self.current == variant.name:
            return None
        model = denoiser(self.pipe)
        for name in loaded_adapters(model):
            unload_adapter(model, name)
        self.current = None
        if variant.adapter is None:
            self.current = variant.name
            return None
        report = load_adapter(self.pipe, variant.adapter, scale=variant.scale, allow_partial=variant.allow_partial,
                              allow_inconsistent=variant.allow_inconsistent)
        if report.sha256 != variant.sha256:
            raise RuntimeError(f"{variant.adapter} changed during the eval (sha256 {report.sha256[:12]}, "
                               f"planned {(variant.sha256 or '')[:12]}); re-run to evaluate the new file")
        verify_effect(self.pipe, self.spec, report)
        self.current = variant.name
        return {"variant": variant.name, "adapter": variant.adapter, "sha256": report.sha256,
                "scale": variant.scale, "step": variant.step, "dialect": report.dialect,
                "modules_matched": len(report.matched), "missing": len(report.missing),
                "unexpected": len(report.unexpected), "rank": value_counts(report.ranks),
                "alpha": value_counts(report.alphas), "effect_max_diff": report.effect_max_diff,
                "summary": report.summary()}

    # ------------------------------------------------------------------ samples

    def run(self, variant: Variant, rows: list[ManifestRow]) -> TaskResult:
        """Render ``rows`` (all of one variant); each sample's media and record land atomically."""
        proof = self.activate(variant)
        records = [self._one(variant, row) for row in rows]
        return TaskResult(records, self.host(), proof)

    def _one(self, variant: Variant, row: ManifestRow) -> dict[str, Any]:
        s, lay = self.s, self.layout
        t0, started = time.perf_counter(), time.time()
        pixels = render(self.pipe, self.spec, row.prompt, row.seed, s.sampling)
        t1 = time.perf_counter()
        final = lay.media(variant.name, row.sample_id, self.ext)
        data = encode_sample(pixels, self.spec.modality, s.sampling.fps)
        atomic_write_bytes(final, data)
        t2 = time.perf_counter()
        record = dict(row.to_dict(), path=str(final.relative_to(lay.root)), adapter=variant.adapter,
                      adapter_sha256=variant.sha256, adapter_scale=variant.scale,
                      adapter_step=variant.step, settings_hash=s.settings_hash,
                      output_sha256=pixels_sha256(pixels), file_sha256=sha256_bytes(data),
                      shape=list(pixels.shape), fps=s.sampling.fps if self.ext == "mp4" else None,
                      timings={"generate_s": round(t1 - t0, 4), "write_s": round(t2 - t1, 4),
                               "start": round(started, 4), "end": round(started + t2 - t0, 4)})
        # The record is written last: its presence is what marks the sample finished.
        write_json_atomic(lay.record(variant.name, row.sample_id), record)
        return record
