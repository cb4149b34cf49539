"""Atomic checkpoints: adapter + resolved config + train state + manifest.

A checkpoint is written into a temporary sibling folder (every rank writes its own part:
its RNG and data position, and under DeepSpeed its optimizer partition) and published by
rank 0 with one ``rename``; the manifest is the last file written inside it. A folder without a manifest, or any
``.tmp-*`` folder, is never resumed from. Train state is stored without pickle: tensors in
safetensors, everything else in JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from .layout import MANIFEST, RunLayout
from training.errors import LorabenchError

STATE_FILE = "state.json"
MANIFEST_VERSION = 1


class CheckpointError(LorabenchError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run resuming from it."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(path: Path) -> str:
    """Hash of a JSON config with sorted keys (stable across key order and whitespace)."""
    data = json.loads(path.read_text())
    data.pop("_diffusers_version", None)  # the library version is not the architecture
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ optimizer (no pickle)


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, slots in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------ train state


@dataclass
class RankState:
    """What one rank needs beyond the adapter and optimizer to continue bit-exactly."""

    rng: dict[str, torch.Tensor]           # name -> ByteTensor state
    data: dict[str, Any]                   # stream position
    skips: dict[str, Any]                  # bad-sample counter

    @staticmethod
    def names(rank: int) -> tuple[str, str]:
        return f"rank-{rank:05d}.json", f"rank-{rank:05d}.rng.safetensors"

    def write(self, folder: Path, rank: int) -> None:
        meta, rng = self.names(rank)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.rng.items()}, str(folder / rng))
        (folder / meta).write_text(json.dumps({"data": self.data, "skips": self.skips}, indent=2,
                                              sort_keys=True))

    @classmethod
    def read(cls, folder: Path, rank: int) -> "RankState":
        meta, rng = cls.names(rank)
        for name in (meta, rng):
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder / name} is missing: this checkpoint holds no state for "
                                      f"rank {rank} (written with fewer workers?)")
        body = json.loads((folder / meta).read_text())
        return cls(rng=load_file(str(folder / rng)), data=body["data"], skips=body["skips"])


def write_shared_state(folder: Path, step: int, world_size: int, engine: str,
                       extra: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps(
        {"step": step, "world_size": world_size, "engine": engine, "extra": extra},
        indent=2, sort_keys=True))


def read_shared_state(folder: Path) -> dict[str, Any]:
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder / STATE_FILE} is missing: this checkpoint cannot be resumed")
    return json.loads((folder / STATE_FILE).read_text())


# ------------------------------------------------------------------ save / load


def begin_checkpoint(layout: RunLayout, step: int, token: str) -> Path:
    """Create the temporary folder every rank writes its part of checkpoint ``step`` into."""
    tmp = layout.temp_checkpoint(step, token)
    tmp.mkdir(parents=True)
    return tmp


def publish_checkpoint(layout: RunLayout, step: int, tmp: Path, manifest: dict[str, Any],
                       keep_last: Optional[int]) -> Path:
    """Hash every file in ``tmp``, write the manifest last, rename into place, prune.

    Called once (rank 0) after all ranks finished writing into ``tmp``.
    """
    final = layout.checkpoint(step)
    try:
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        body = dict(manifest, manifest_version=MANIFEST_VERSION, step=step,
                    created_unix=round(time.time(), 3),
                    files={f: sha256_file(tmp / f) for f in files})
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True))
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(layout, keep_last)
    return final


def save_checkpoint(layout: RunLayout, step: int, *, write_files, manifest: dict[str, Any],
                    keep_last: Optional[int]) -> Path:
    """Single-writer convenience: ``write_files(tmp)`` writes everything, then publish."""
    tmp = begin_checkpoint(layout, step, uuid.uuid4().hex[:8])
    try:
        write_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_checkpoint(layout, step, tmp, manifest, keep_last)


def _fsync_tree(folder: Path) -> None:
    # The rename publishes the folder; make sure its contents reached the disk first.
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def prune_checkpoints(layout: RunLayout, keep_last: Optional[int]) -> list[Path]:
    """Remove all but the newest ``keep_last`` checkpoints (None keeps all) and stale temp dirs.

    Called right after a publish, when no other save of this run is in flight.
    """
    # Leftover temp dirs come from a crash during a save; they are never valid.
    for p in layout.checkpoints.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last is None:
        return []
    done = layout.complete_checkpoints()
    removed = [p for _, p in done[:-keep_last]] if len(done) > keep_last else []
    for p in removed:
        shutil.rmtree(p)
    return removed


def read_manifest(folder: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint's manifest and (by default) check every file's sha256."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{folder} has no {MANIFEST}: it is incomplete (a crash during save?) "
                              "and cannot be used")
    manifest = json.loads(mpath.read_text())
    if verify:
        for name, digest in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"{path} listed in {mpath} is missing")
            if sha256_file(path) != digest:
                raise CheckpointError(f"{path} does not match the sha256 in {mpath}: the file changed "
                                      "or is corrupt")
    return manifest


def resolve_resume(layout: RunLayout, resume: Optional[str]) -> Optional[Path]:
    """Map ``train.resume`` (null | auto | path) to a checkpoint folder, or None for a fresh run."""
    if resume is None:
        return None
    if resume == "auto":
        return layout.latest_checkpoint()
    p = Path(resume)
    if not p.is_dir():
        raise CheckpointError(f"train.resume={resume!r}: no such checkpoint folder")
    read_manifest(p, verify=False)
    return p
