"""A crash never blocks a resume: torn logs, damaged manifests and full disks, on real files.

One tiny Wan run (checkpoints at steps 2, 4 and 6) is trained once per module; each test
damages a copy of it the way a kill, a bad copy or a full disk would, and checks what the
next ``train.resume`` does. Full disks are real: a small tmpfs where we may mount one, and a
file-size limit (RLIMIT_FSIZE) on a ``python -m training`` subprocess everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training.checkpoint import (CheckpointError, CheckpointSpaceError, RankState, read_manifest,
                                 read_shared_state, resolve_resume, write_shared_state)
from training.fsio import CorruptFileError, append_jsonl, atomic_write_bytes, read_jsonl
from training.layout import RunLayout
from training.trainer import Trainer

from ..conftest import CONFIGS, REPO, tiny_config
from .conftest import save_checkpoint

COMMON = ["checkpoint.every_steps=2", "checkpoint.keep_last=null", "log.tensorboard=false",
          "lora.dropout=0.1"]


@pytest.fixture(scope="module")
def trained(tiny_wan, video_shards, tmp_path_factory):
    """(runs folder, losses) of one uninterrupted 6-step run with checkpoints 2, 4 and 6."""
    base = tmp_path_factory.mktemp("trained")
    result = Trainer(tiny_config("wan", tiny_wan, video_shards, base, "train.max_steps=6", *COMMON)).run()
    assert [s for s, _ in RunLayout(result.run_dir).complete_checkpoints()] == [2, 4, 6]
    return base / "runs", result.losses


def _copy_run(trained, dest: Path, drop_steps=()) -> RunLayout:
    """A copy of the trained run under ``dest/runs``, as if it had stopped before ``drop_steps`` were saved."""
    shutil.copytree(trained[0], dest / "runs")
    layout = RunLayout(dest / "runs" / "tiny-wan")
    for step in drop_steps:
        shutil.rmtree(layout.checkpoint(step))
    return layout


def _metric_steps(layout: RunLayout) -> list[int]:
    return [json.loads(line)["step"] for line in layout.metrics.read_text().splitlines()]


def _warnings(caplog, *phrases: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and all(p in r.getMessage() for p in phrases)]


# ------------------------------------------------------------------ 1. torn append-only logs


def test_torn_last_metrics_line_is_dropped_once_and_resume_continues(trained, tiny_wan, video_shards,
                                                                      tmp_path, caplog):
    layout = _copy_run(trained, tmp_path)
    with open(layout.metrics, "ab") as f:  # a kill in the middle of writing step 7's record
        f.write(b'{"grad_norm": 0.31, "loss": 0.2')
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=7", "train.resume=auto", *COMMON)
    with caplog.at_level(logging.WARNING):
        result = Trainer(cfg).run()
    assert sorted(result.losses) == [7]
    assert _metric_steps(layout) == [1, 2, 3, 4, 5, 6, 7]  # every complete line kept, the torn one gone
    torn = _warnings(caplog, str(layout.metrics), "dropped a torn last line")
    assert len(torn) == 1 and "31 bytes" in torn[0] and '{"grad_norm": 0.31, "loss": 0.2' in torn[0]


def test_damaged_middle_metrics_line_is_an_error_naming_file_and_line(trained, tiny_wan, video_shards, tmp_path):
    layout = _copy_run(trained, tmp_path)
    lines = layout.metrics.read_text().splitlines()
    lines[2] = lines[2][:15]  # not something a crash can do: the damage is not at the end
    layout.metrics.write_text("\n".join(lines) + "\n")
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=7", "train.resume=auto", *COMMON)
    with pytest.raises(CorruptFileError) as e:
        Trainer(cfg).run()
    msg = str(e.value)
    assert msg.startswith(f"{layout.metrics}:3: not valid JSON (") and "move the file aside" in msg
    assert "\n" not in msg


def test_read_jsonl_tolerates_only_a_torn_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3')
    got = read_jsonl(p)
    assert got.records == [{"a": 1}, {"a": 2}] and got.torn == b'{"a": 3' and got.good_bytes == 19
    p.write_bytes(b'{"a": 1}\n{"a": 2}')  # complete record, only the newline lost: kept
    got = read_jsonl(p)
    assert got.records == [{"a": 1}, {"a": 2}] and got.torn is None
    p.write_bytes(b'{"a": 1}\n\x00\x00\x00\x00')  # what a power loss can leave at the end
    assert read_jsonl(p).records == [{"a": 1}] and read_jsonl(p).torn == b"\x00" * 4
    p.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(CorruptFileError, match=rf"^{p}:2: not valid JSON \("):
        read_jsonl(p)
    assert read_jsonl(tmp_path / "missing.jsonl").records == []


def test_append_jsonl_cuts_a_torn_tail_before_appending(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2, "b": [1, 2')
    repaired = append_jsonl(p, {"a": 3})
    assert repaired is not None and repaired.torn == b'{"a": 2, "b": [1, 2'
    assert p.read_bytes() == b'{"a": 1}\n{"a": 3}\n'
    p.write_bytes(b'{"a": 1}')  # only the newline missing: the record stays, the newline is added
    assert append_jsonl(p, {"a": 2}) is None
    assert p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


# ------------------------------------------------------------------ 2. damaged manifests and state


def test_auto_resume_skips_a_checkpoint_whose_manifest_does_not_parse(trained, tiny_wan, video_shards,
                                                                     tmp_path, caplog):
    layout = _copy_run(trained, tmp_path)
    manifest = layout.checkpoint(6) / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])  # truncated, e.g. by an interrupted copy
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=6", "train.resume=auto", *COMMON)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg)
        assert trainer.resume_from == layout.checkpoint(4)
        result = trainer.run()
    skipped = _warnings(caplog, f"skipping checkpoint {layout.checkpoint(6)}", "manifest.json is not valid JSON")
    assert len(skipped) == 1  # said once, although the layout is listed again after each save
    # The fallback resume is exact: steps 5 and 6 repeat the uninterrupted run bit for bit.
    assert result.losses == {5: trained[1][5], 6: trained[1][6]}
    assert read_manifest(layout.checkpoint(6))["step"] == 6  # saving step 6 again replaced the damaged one


def test_explicit_resume_from_a_damaged_manifest_is_a_one_line_checkpoint_error(trained, tiny_wan, video_shards,
                                                                               tmp_path):
    layout = _copy_run(trained, tmp_path)
    ckpt = layout.checkpoint(4)
    (ckpt / "manifest.json").write_bytes(b'{"step": 4, "files": {"adapter_m')
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=6", f"train.resume={ckpt}", *COMMON)
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg)
    msg = str(e.value)
    assert msg.startswith(f"train.resume='{ckpt}': {ckpt / 'manifest.json'} is not valid JSON (")
    assert "the checkpoint is damaged" in msg and "train.resume=auto skips" in msg and "\n" not in msg
    (ckpt / "manifest.json").write_text("[]")  # valid JSON, but no manifest
    with pytest.raises(CheckpointError, match=r"manifest.json has no 'files' table of sha256s: the checkpoint is damaged"):
        read_manifest(ckpt, verify=False)
    assert [s for s, _ in layout.complete_checkpoints()] == [2, 6]


def test_damaged_files_inside_a_checkpoint_are_one_line_errors(trained, tiny_wan, video_shards, tmp_path):
    layout = _copy_run(trained, tmp_path)
    ckpt = layout.checkpoint(6)
    # config.yaml is read before any weights load: its sha256 is checked there, not after minutes.
    config = ckpt / "config.yaml"
    config.write_text(config.read_text()[:300])
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=8", "train.resume=auto", *COMMON)
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg)
    assert str(e.value).startswith(f"{config} does not match the sha256 in {ckpt / 'manifest.json'}")
    assert "train.resume=PATH" in str(e.value) and "\n" not in str(e.value)
    shutil.copy(layout.checkpoint(4) / "config.yaml", config)  # same bytes as step 6's

    state = ckpt / "train_state" / "state.json"
    state.write_text(state.read_text()[:40])
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg).run()
    assert str(e.value).startswith(f"{state} does not match the sha256") and "\n" not in str(e.value)
    # Read on their own (no manifest to check against), the state files are one-line errors too.
    with pytest.raises(CheckpointError, match=rf"^{state} is not valid JSON \(.*\): the checkpoint is damaged"):
        read_shared_state(state.parent)
    rank = state.parent / "rank-00000.json"
    rank.write_text('{"data": {"epoch": 0')
    with pytest.raises(CheckpointError, match=rf"^{rank} is not valid JSON"):
        RankState.read(state.parent, 0)


def test_auto_resume_never_starts_over_next_to_damaged_checkpoints(tmp_path):
    layout = RunLayout(tmp_path / "run")
    for step in (1, 2):
        save_checkpoint(layout, step, write_files=_toy_files(10), manifest={}, keep_last=None)
    (layout.checkpoint(2) / "manifest.json").write_text('{"files": {')
    assert resolve_resume(layout, "auto") == layout.checkpoint(1)
    (layout.checkpoint(1) / "manifest.json").write_bytes(b"\x00" * 16)  # a power loss after the rename
    with pytest.raises(CheckpointError) as e:
        resolve_resume(layout, "auto")
    msg = str(e.value)
    assert msg.startswith(f"train.resume=auto: no usable checkpoint in {layout.checkpoints}, only damaged ones: "
                          "step-0000001 (manifest.json is not valid JSON (")
    assert "step-0000002 (manifest.json is not valid JSON (" in msg and "\n" not in msg
    assert msg.endswith("restore one from a copy, or move them aside to start the run over")
    for step in (1, 2):
        shutil.rmtree(layout.checkpoint(step))
    assert resolve_resume(layout, "auto") is None  # nothing there at all: a fresh start, as before


# ------------------------------------------------------------------ 3. full disks


@pytest.fixture
def small_fs(tmp_path):
    """A real 4 MiB filesystem (tmpfs), where this test may mount one (Linux, root)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root on Linux to mount a small tmpfs")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path, leave: int) -> Path:
    """Fill ``fs`` until ``leave`` bytes are free."""
    filler = fs / "filler.bin"
    with open(filler, "wb") as f:
        f.write(b"\xff" * (shutil.disk_usage(fs).free - leave))
    assert shutil.disk_usage(fs).free == leave
    return filler


def _no_temp_dirs(layout: RunLayout) -> bool:
    return not list(layout.checkpoints.glob(".tmp-*"))


def test_full_disk_refuses_the_save_before_writing_and_keeps_the_last_checkpoint(trained, tiny_wan, video_shards,
                                                                                small_fs):
    layout = _copy_run(trained, small_fs, drop_steps=(6,))
    size = sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in layout.checkpoint(4).rglob("*")
               if p.is_file())
    filler = _fill(small_fs, 64 * 1024)  # room for the logs, not for a checkpoint
    cfg = tiny_config("wan", tiny_wan, video_shards, small_fs, "train.max_steps=6", "train.resume=auto", *COMMON)
    with pytest.raises(CheckpointSpaceError) as e:
        Trainer(cfg).run()
    msg = str(e.value)
    assert msg == (f"not enough space to save checkpoint step-0000006 into {layout.checkpoints}: a checkpoint "
                   f"of this run takes {_kib(layout.checkpoint(4))} (the size of step-0000004) and the filesystem at "
                   f"{small_fs} has 64.0 KiB free; nothing was written and step-0000004 is intact: free at "
                   f"least {(size - 65536) / 1024:.1f} KiB more on {small_fs}, then resume with train.resume=auto")
    assert _no_temp_dirs(layout) and [s for s, _ in layout.complete_checkpoints()] == [2, 4]
    read_manifest(layout.checkpoint(4), verify=True)

    filler.unlink()  # space freed: the same command resumes and ends exactly like the straight run
    result = Trainer(cfg).run()
    assert result.losses == {5: trained[1][5], 6: trained[1][6]}
    read_manifest(layout.checkpoint(6), verify=True)
    assert _metric_steps(layout) == [1, 2, 3, 4, 5, 6]


def _toy_files(nbytes: int):
    def write(d: Path) -> None:
        (d / "adapter_model.safetensors").write_bytes(b"\x01" * 4096)
        (d / "big.bin").write_bytes(b"\x02" * nbytes)
        write_shared_state(d / "train_state", 1, 1, "local", {})
    return write


def test_disk_full_in_the_middle_of_a_save_removes_the_partial_save(small_fs):
    layout = RunLayout(small_fs / "run")
    # No earlier checkpoint: nothing to estimate from, so the write itself runs out of space.
    with pytest.raises(CheckpointSpaceError) as e:
        save_checkpoint(layout, 1, write_files=_toy_files(8 << 20), manifest={}, keep_last=None)
    msg = str(e.value)
    assert msg.startswith(f"cannot save checkpoint step-0000001 into {layout.checkpoints}: no space left on "
                          "device after writing 4.0 MiB; the first checkpoint of this run needs more than that, and the "
                          f"filesystem at {small_fs} has 4.0 MiB free")  # measured before the cleanup
    assert msg.endswith(f"there is no earlier checkpoint: make more than 4.0 MiB free on {small_fs}, then resume with "
                        "train.resume=auto") and "\n" not in msg
    assert _no_temp_dirs(layout) and layout.complete_checkpoints() == []

    save_checkpoint(layout, 1, write_files=_toy_files(100_000), manifest={}, keep_last=None)
    filler = _fill(small_fs, 512 * 1024)  # more than checkpoint 1 takes: the pre-check lets it try
    with pytest.raises(CheckpointSpaceError) as e:
        save_checkpoint(layout, 2, write_files=_toy_files(1 << 20), manifest={}, keep_last=None)
    msg = str(e.value)
    assert msg == (f"cannot save checkpoint step-0000002 into {layout.checkpoints}: no space left on device "
                   f"after writing 512.0 KiB; a checkpoint of this run takes {_kib(layout.checkpoint(1))} (the size "
                   f"of step-0000001), and the filesystem at {small_fs} has 512.0 KiB free. The partial save was "
                   f"removed and step-0000001 is intact: make more than 512.0 KiB free on {small_fs}, then resume "
                   f"with train.resume=auto")
    assert _no_temp_dirs(layout) and shutil.disk_usage(small_fs).free == 512 * 1024
    read_manifest(layout.checkpoint(1), verify=True)

    filler.unlink()
    _fill(small_fs, 32 * 1024)  # less than checkpoint 1 takes: refused before writing anything
    calls = []
    with pytest.raises(CheckpointSpaceError, match="nothing was written and step-0000001 is intact"):
        save_checkpoint(layout, 2, write_files=calls.append, manifest={}, keep_last=None)
    assert calls == [] and _no_temp_dirs(layout)


def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_fs):
    target = small_fs / "result.json"
    atomic_write_bytes(target, b"old")
    _fill(small_fs, 8 * 1024)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"x" * 64 * 1024)
    assert e.value.errno == 28  # ENOSPC
    assert target.read_bytes() == b"old" and sorted(p.name for p in small_fs.iterdir()) == ["filler.bin",
                                                                                            "result.json"]


@pytest.mark.slow  # python -m training subprocesses
def test_file_size_limit_during_a_save_is_a_one_line_error_and_resume_still_works(trained, tiny_wan,
                                                                                   video_shards, tmp_path):
    """Out of space half-way through a real save, without root: RLIMIT_FSIZE makes writes past
    the limit fail (EFBIG) in a ``python -m training`` subprocess, as ENOSPC would."""
    layout = _copy_run(trained, tmp_path, drop_steps=(6,))
    overrides = [f"model.path={tiny_wan}", f"data.shards={video_shards}", f"output_dir={tmp_path / 'runs'}",
                 "log.progress=false", "train.max_steps=6", "train.resume=auto", *COMMON]
    limit = 32 * 1024  # below the optimizer state and the adapter of this tiny model

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "training", str(CONFIGS / "train" / "tiny-wan.yaml"), *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error: " in line and "cannot save" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert re.search(
        rf"error: cannot save checkpoint step-0000006 into {re.escape(str(layout.checkpoints))}: a file grew "
        rf"past this process's file-size limit after writing [0-9.]+ (bytes|KiB); a checkpoint of this run "
        rf"takes {_kib(layout.checkpoint(4))} \(the size of step-0000004\), and the filesystem at /\S* has "
        rf"[0-9.]+ [KMGT]iB free\. The partial save was removed and step-0000004 is intact: raise the "
        rf"file-size limit \(ulimit -f\) of the training processes, then resume with train\.resume=auto$",
        errors[0]), errors[0]
    assert _no_temp_dirs(layout) and [s for s, _ in layout.complete_checkpoints()] == [2, 4]
    read_manifest(layout.checkpoint(4), verify=True)

    # Without the limit the same resume goes on from step 4, exactly.
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=6", "train.resume=auto", *COMMON)
    result = Trainer(cfg).run()
    assert result.losses == {5: trained[1][5], 6: trained[1][6]}
    read_manifest(layout.checkpoint(6), verify=True)
    assert _metric_steps(layout) == [1, 2, 3, 4, 5, 6]


def _kib(folder: Path) -> str:
    """What a checkpoint folder takes on disk, as the messages print it."""
    used = sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in folder.rglob("*") if p.is_file())
    return f"{used / 1024:.1f} KiB"


def test_every_resume_invariant_is_a_config_field_and_new_ones_default_for_old_checkpoints():
    from training.config import RunConfig, resume_invariants, setting
    invariants = resume_invariants()
    # Read from the config model, so they cannot name a field that does not exist; the sections
    # whose change would alter data order, loss or optimizer trajectory are all represented.
    assert {k.split(".")[0] for k in invariants} == {"seed", "model", "lora", "data", "train", "optim"}
    assert {"data.shards", "train.batch_size", "optim.lr", "lora", "model.path"} <= set(invariants)
    assert not {"train.max_steps", "checkpoint.every_steps", "log.every_steps"} & set(invariants)
    fresh = RunConfig.model_validate({"run_name": "r", "model": {"path": "m"}, "data": {"shards": "d"}}).to_dict()
    for key in invariants:
        assert setting({}, key) == setting(fresh, key) or key in ("model.path", "data.shards")
    # A checkpoint written before data.long_captions existed resumes as the default policy.
    assert setting({"data": {"shards": "x"}}, "data.long_captions") == "truncate"
    assert setting({"data": {"long_captions": "skip"}}, "data.long_captions") == "skip"
