import json

import pytest
import torch

from training.checkpoint import (RankState, flatten_optimizer, prune_checkpoints, read_shared_state,
                                 unflatten_optimizer, write_shared_state)
from training.checkpoint import CheckpointError
from training.layout import RunLayout

from .conftest import save_checkpoint


def _optimizer():
    p = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(p, lr=1e-3, betas=(0.8, 0.95))
    for _ in range(2):
        sum((x ** 2).sum() for x in p).backward()
        opt.step()
    return p, opt


def test_optimizer_state_round_trips_without_pickle():
    _, opt = _optimizer()
    tensors, meta = flatten_optimizer(opt.state_dict())
    restored = unflatten_optimizer(tensors, meta)
    ref = opt.state_dict()
    assert restored["param_groups"] == ref["param_groups"]
    for i, slots in ref["state"].items():
        for k, v in slots.items():
            assert torch.equal(restored["state"][i][k], v)
    p2 = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4))]
    opt2 = torch.optim.AdamW(p2)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)


def _save(layout, step, keep):
    def files(d):
        (d / "adapter_model.safetensors").write_bytes(b"x" * step)
        write_shared_state(d / "train_state", step, 2, "local", {"k": 1})
        for rank in (0, 1):
            RankState(rng={"torch_cpu": torch.get_rng_state()}, data={"epoch": 0, "position": step + rank},
                      skips={}).write(d / "train_state", rank)
    return save_checkpoint(layout, step, write_files=files, manifest={"k": "v"}, keep_last=keep)


def test_keep_last_and_no_temp_dirs_left(tmp_path):
    layout = RunLayout.for_run(tmp_path, "r")
    for step in (1, 2, 3, 4):
        _save(layout, step, keep=2)
    assert [s for s, _ in layout.complete_checkpoints()] == [3, 4]
    assert sorted(p.name for p in layout.checkpoints.iterdir()) == ["step-0000003", "step-0000004"]
    folder = layout.checkpoint(4) / "train_state"
    assert read_shared_state(folder) == {"step": 4, "world_size": 2, "engine": "local", "extra": {"k": 1}}
    assert RankState.read(folder, 1).data == {"epoch": 0, "position": 5}
    manifest = json.loads((layout.checkpoint(4) / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["adapter_model.safetensors", "train_state/rank-00000.json",
                                         "train_state/rank-00000.rng.safetensors",
                                         "train_state/rank-00001.json",
                                         "train_state/rank-00001.rng.safetensors", "train_state/state.json"]
    with pytest.raises(CheckpointError, match="no state for rank 2"):
        RankState.read(folder, 2)
    assert prune_checkpoints(layout, None) == []


def test_failed_save_leaves_nothing_resumable(tmp_path):
    layout = RunLayout.for_run(tmp_path, "r")
    _save(layout, 1, keep=None)

    def broken(d):
        (d / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(layout, 2, write_files=broken, manifest={}, keep_last=None)
    assert layout.latest_checkpoint() == layout.checkpoint(1)
    assert not list(layout.checkpoints.glob(".tmp-*"))
