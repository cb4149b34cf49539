import torch

from training.checkpoint import (TrainState, flatten_optimizer, prune_checkpoints, save_checkpoint,
                                 unflatten_optimizer)
from training.layout import RunLayout


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
    _, opt = _optimizer()
    state = TrainState(step=step, optimizer=opt.state_dict(), rng={"torch_cpu": torch.get_rng_state()},
                       data={"epoch": 0, "position": step}, skips={})

    def files(d):
        (d / "adapter_model.safetensors").write_bytes(b"x" * step)
        return ["adapter_model.safetensors"]
    return save_checkpoint(layout, step, write_adapter_files=files, config_yaml="a: 1\n",
                           train_state=state, manifest={"k": "v"}, keep_last=keep)


def test_keep_last_and_no_temp_dirs_left(tmp_path):
    layout = RunLayout.for_run(tmp_path, "r")
    for step in (1, 2, 3, 4):
        _save(layout, step, keep=2)
    assert [s for s, _ in layout.complete_checkpoints()] == [3, 4]
    assert sorted(p.name for p in layout.checkpoints.iterdir()) == ["step-0000003", "step-0000004"]
    ts = TrainState.read(layout.checkpoint(4) / "train_state")
    assert ts.step == 4 and ts.data == {"epoch": 0, "position": 4}
    assert prune_checkpoints(layout, None) == []


def test_failed_save_leaves_nothing_resumable(tmp_path):
    layout = RunLayout.for_run(tmp_path, "r")
    _save(layout, 1, keep=None)

    def broken(d):
        (d / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")
    _, opt = _optimizer()
    state = TrainState(step=2, optimizer=opt.state_dict(), rng={}, data={}, skips={})
    try:
        save_checkpoint(layout, 2, write_adapter_files=broken, config_yaml="", train_state=state,
                        manifest={}, keep_last=None)
    except OSError:
        pass
    assert layout.latest_checkpoint() == layout.checkpoint(1)
    assert not list(layout.checkpoints.glob(".tmp-*"))
