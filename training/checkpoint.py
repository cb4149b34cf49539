"""Atomic checkpoints: adapter + resolved config + train state + manifest.

A checkpoint is written into a temporary sibling folder (every rank writes its own part:
its RNG and data position, and under DeepSpeed its optimizer partition) and published by
rank 0 with one ``rename``; the manifest is the last file written inside it. A folder without a
manifest (or with one that does not parse), or any ``.tmp-*`` folder, is never resumed from.
Train state is stored without pickle: tensors in safetensors, everything else in JSON.

Running out of space never costs the previous checkpoint: a save that would certainly not fit
(the last checkpoint is bigger than the free space) is refused before anything is written, and
a write that fails for lack of space removes its temporary folder. Both are a one-line
:class:`CheckpointSpaceError` saying how much is needed and how much is free where.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml
from safetensors.torch import load_file, save_file

from .errors import LorabenchError, exception_chain
from .fsio import existing_ancestor, fsync_dir, human_bytes, sha256_file, sha256_json
from .layout import CKPT_CONFIG, MANIFEST, RunLayout, manifest_problem

STATE_FILE = "state.json"
MANIFEST_VERSION = 1


class CheckpointError(LorabenchError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run resuming from it."""


class CheckpointSpaceError(CheckpointError):
    """A checkpoint could not be saved for lack of space (or a file-size limit); the previous one is intact."""


_DAMAGED_HINT = ("restore the folder from a copy, or resume from an earlier checkpoint with "
                 "train.resume=PATH (train.resume=auto skips checkpoints whose manifest does not parse)")


def _load_json(path: Path) -> Any:
    """A JSON file of a checkpoint; a file that does not parse is a one-line CheckpointError."""
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the checkpoint is damaged; "
                              f"{_DAMAGED_HINT}") from None


def config_hash(path: Path) -> str:
    """Hash of a JSON config with sorted keys (stable across key order and whitespace)."""
    data = json.loads(path.read_text())
    data.pop("_diffusers_version", None)  # the library version is not the architecture
    return sha256_json(data)


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
        body = _load_json(folder / meta)
        if not isinstance(body, dict) or not {"data", "skips"} <= set(body):
            raise CheckpointError(f"{folder / meta} lacks 'data' or 'skips': the checkpoint is damaged; "
                                  f"{_DAMAGED_HINT}")
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
    body = _load_json(folder / STATE_FILE)
    if not isinstance(body, dict) or "step" not in body:
        raise CheckpointError(f"{folder / STATE_FILE} has no 'step': the checkpoint is damaged; {_DAMAGED_HINT}")
    return body


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
        fsync_dir(final.parent)  # the rename itself must survive a power loss too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(layout, keep_last)
    return final


def _fsync_tree(folder: Path) -> None:
    # The rename publishes the folder; make sure its contents reached the disk first.
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def remove_temp_checkpoints(layout: RunLayout) -> None:
    """Remove ``.tmp-step-*`` folders: left by a crash during a save, they are never valid.

    Only while no save of this run is in flight (before a save starts, or after a publish).
    """
    if layout.checkpoints.is_dir():
        for p in layout.checkpoints.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(layout: RunLayout, keep_last: Optional[int]) -> list[Path]:
    """Remove all but the newest ``keep_last`` checkpoints (None keeps all) and stale temp dirs.

    Called right after a publish, when no other save of this run is in flight.
    """
    remove_temp_checkpoints(layout)
    if keep_last is None:
        return []
    done = layout.complete_checkpoints()
    removed = [p for _, p in done[:-keep_last]] if len(done) > keep_last else []
    for p in removed:
        shutil.rmtree(p)
    return removed


# ------------------------------------------------------------------ running out of space

# errno -> (what happened, what to do); safetensors reports these as "... (os error N)".
_SPACE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "{amount} on {mount}"),
    errno.EDQUOT: ("disk quota exceeded", "{amount} of your quota on {mount} (or raise the quota)"),
    errno.EFBIG: ("a file grew past this process's file-size limit",
                  "raise the file-size limit (ulimit -f) of the training processes"),
}
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def checkpoint_bytes(folder: Path) -> int:
    """Space the files under ``folder`` take: the larger of their size and their allocated blocks."""
    total = 0
    for p in folder.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if p.is_file():
            total += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
    return total


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (the top folder on the same device)."""
    path = existing_ancestor(path.resolve())
    dev = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def _space_errno(exc: BaseException) -> Optional[int]:
    """The errno if ``exc`` (or what it was raised from) is a lack of space or a file-size limit."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            return e.errno
        m = _OS_ERROR.search(str(e))
        if m and int(m.group(1)) in _SPACE_ERRNOS:
            return int(m.group(1))
    return None


def _space_report(layout: RunLayout) -> tuple[Optional[Path], int, Path, int]:
    """(last complete checkpoint, its size, mount point of the checkpoints folder, free bytes)."""
    last = layout.latest_checkpoint()
    size = checkpoint_bytes(last) if last is not None else 0
    where = layout.checkpoints if layout.checkpoints.exists() else layout.root
    return last, size, _mount_point(where), shutil.disk_usage(existing_ancestor(where)).free


def space_shortfall(layout: RunLayout, step: int) -> Optional[str]:
    """Why checkpoint ``step`` cannot fit, or None when it may.

    The estimate is the size of the last complete checkpoint: every checkpoint of a run holds
    the same tensors (adapter, optimizer state, RNG), so when the free space is smaller the
    save would certainly fail half-way; refusing first writes nothing. Without an earlier
    checkpoint there is no estimate and the save just tries (see :func:`space_errors`).
    """
    last, need, mount, free = _space_report(layout)
    if last is None or free >= need:
        return None
    return (f"not enough space to save checkpoint {layout.checkpoint(step).name} into {layout.checkpoints}: "
            f"a checkpoint of this run takes {human_bytes(need)} (the size of {last.name}) and the filesystem "
            f"at {mount} has {human_bytes(free)} free; nothing was written and {last.name} is intact: free at "
            f"least {human_bytes(need - free)} more on {mount}, then resume with train.resume=auto")


@contextlib.contextmanager
def space_errors(layout: RunLayout, step: int, tmp: Path, *, cleanup: bool = True) -> Iterator[Path]:
    """Turn a write that failed for lack of space into a one-line :class:`CheckpointSpaceError`.

    With ``cleanup`` (no other rank may still write into ``tmp``) the temporary folder is
    removed on any failure, so a failed save never leaves a partial checkpoint taking space.
    """
    try:
        yield tmp
    except BaseException as e:
        code = _space_errno(e) if isinstance(e, Exception) else None
        written = checkpoint_bytes(tmp) if code is not None and tmp.exists() else 0
        if cleanup:
            shutil.rmtree(tmp, ignore_errors=True)
        if code is None:
            raise
        last, need, mount, free = _space_report(layout)
        what, todo = _SPACE_ERRNOS[code]
        # Free space after the cleanup is back to what the save started with; it needed more.
        amount = f"make more than {human_bytes(written)} free"
        if last is not None:
            size = f"a checkpoint of this run takes {human_bytes(need)} (the size of {last.name})"
            if need > free:
                amount = f"free at least {human_bytes(need - free)} more"
            kept = f"{last.name} is intact"
        else:
            size = "the first checkpoint of this run needs more than that"
            kept = "there is no earlier checkpoint"
        partial = "The partial save was removed" if cleanup else f"The partial save {tmp} is removed by the next save"
        raise CheckpointSpaceError(
            f"cannot save checkpoint {layout.checkpoint(step).name} into {layout.checkpoints}: {what} "
            f"after writing {human_bytes(written)}; {size}, and the filesystem at {mount} has {human_bytes(free)} "
            f"free. {partial} and {kept}: {todo.format(amount=amount, mount=mount)}, then resume with "
            f"train.resume=auto") from e


# ------------------------------------------------------------------ reading


def read_manifest(folder: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint's manifest and (by default) check every file's sha256."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{folder} has no {MANIFEST}: it is incomplete (a crash during save?) "
                              "and cannot be used")
    problem = manifest_problem(folder)
    if problem is not None:
        raise CheckpointError(f"{mpath} {problem}: the checkpoint is damaged; {_DAMAGED_HINT}")
    manifest = json.loads(mpath.read_bytes())
    if verify:
        for name, digest in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"{path} listed in {mpath} is missing: the checkpoint is damaged; "
                                      f"{_DAMAGED_HINT}")
            if sha256_file(path) != digest:
                raise CheckpointError(f"{path} does not match the sha256 in {mpath}: the file changed "
                                      f"or is corrupt; {_DAMAGED_HINT}")
    return manifest


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    """The config a checkpoint was trained with, checked against its sha256 in the manifest."""
    manifest = read_manifest(folder, verify=False)
    path = folder / CKPT_CONFIG
    digest = manifest["files"].get(CKPT_CONFIG)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is damaged; {_DAMAGED_HINT}")
    if digest is not None and sha256_file(path) != digest:
        raise CheckpointError(f"{path} does not match the sha256 in {folder / MANIFEST}: the file changed "
                              f"or is corrupt; {_DAMAGED_HINT}")
    try:
        body = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not valid YAML ({first}): the checkpoint is damaged; "
                              f"{_DAMAGED_HINT}") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"{path} is not a config mapping: the checkpoint is damaged; {_DAMAGED_HINT}")
    return body


def resolve_resume(layout: RunLayout, resume: Optional[str]) -> Optional[Path]:
    """Map ``train.resume`` (null | auto | path) to a checkpoint folder, or None for a fresh run.

    ``auto`` takes the newest checkpoint whose manifest parses; the others are skipped with a
    log line (see :meth:`RunLayout.complete_checkpoints`).
    """
    if resume is None:
        return None
    if resume == "auto":
        latest = layout.latest_checkpoint()
        damaged = layout.damaged_checkpoints()
        if latest is None and damaged:  # never start over silently next to checkpoints that exist
            names = ", ".join(f"{p.name} ({MANIFEST} {problem})" for _, p, problem in damaged)
            raise CheckpointError(f"train.resume=auto: no usable checkpoint in {layout.checkpoints}, only "
                                  f"damaged ones: {names}; restore one from a copy, or move them aside to "
                                  f"start the run over")
        return latest
    p = Path(resume)
    if not p.is_dir():
        raise CheckpointError(f"train.resume={resume!r}: no such checkpoint folder")
    try:
        read_manifest(p, verify=False)
    except CheckpointError as e:
        raise CheckpointError(f"train.resume={resume!r}: {e}") from None
    return p
