"""Multi-rank training without Ray: torchrun ranks, real DeepSpeed engines over gloo."""

import json

import pytest
import torch

from ..conftest import CONFIGS, load_adapter_tensors, run_ranks, tiny_config
from training.adapters import inspect_adapter
from training.checkpoint import read_manifest
from training.models import get_spec

pytestmark = pytest.mark.distributed  # real multi-process clusters: outside the quick tier

TINY = CONFIGS / "train" / "tiny-wan.yaml"


def _zero3_json(tmp_path):
    # Persistence threshold 0: every parameter, LoRA included, is partitioned on the tiny model
    # (the shipped 1e5 would keep all of its small tensors whole and test nothing).
    cfg = json.loads((CONFIGS / "deepspeed" / "zero3.json").read_text())
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3-all.json"
    path.write_text(json.dumps(cfg))
    return path


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_zero3_two_ranks_saves_full_adapter_and_resumes_exactly(tiny_wan, video_shards, tmp_path):
    common = [f"model.path={tiny_wan}", f"data.shards={video_shards}", f"output_dir={tmp_path}",
              f"deepspeed.config={_zero3_json(tmp_path)}", "checkpoint.every_steps=3",
              "checkpoint.keep_last=null"]
    _ok(run_ranks(2, TINY, *common, "run_name=straight", "train.max_steps=6"))
    _ok(run_ranks(2, TINY, *common, "run_name=resumed", "train.max_steps=3"))
    out = _ok(run_ranks(2, TINY, *common, "run_name=resumed", "train.max_steps=6", "train.resume=auto"))
    assert "resumed from" in out.stderr and "step-0000003 at step 3" in out.stderr

    straight = tmp_path / "straight/checkpoints/step-0000006"
    resumed = tmp_path / "resumed/checkpoints/step-0000006"
    a, b = load_adapter_tensors(straight), load_adapter_tensors(resumed)
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6

    # Saved from gathered ZeRO-3 partitions: full shapes, no wrapper prefixes, trained B.
    model = get_spec("wan").load_pipeline(str(tiny_wan), dtype=torch.float32).transformer
    report = inspect_adapter(straight, model)
    assert report.ok and not report.missing and not report.unexpected
    assert all(k.startswith("base_model.model.blocks.") and ".module." not in k for k in a)
    assert all(v.numel() > 0 for v in a.values())
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # B starts at zero

    manifest = read_manifest(straight)  # every sha256 checked
    files = set(manifest["files"])
    assert {"train_state/rank-00000.json", "train_state/rank-00001.json",
            "train_state/deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "train_state/deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    state = json.loads((straight / "train_state/state.json").read_text())
    assert state["world_size"] == 2 and state["engine"] == "deepspeed"
    ranks = [json.loads((straight / f"train_state/rank-0000{r}.json").read_text())["data"] for r in (0, 1)]
    assert ranks[0]["epoch"] == ranks[1]["epoch"] and ranks[0]["yielded"] == ranks[1]["yielded"]

    # Exact resume needs the same world: one rank cannot continue a two-rank checkpoint.
    one = run_ranks(1, TINY, *common, "run_name=resumed", "train.max_steps=9", "train.resume=auto")
    assert one.returncode != 0  # torchrun reports a failed rank as 1
    assert "written by 2 rank(s)" in one.stderr and "same parallel.num_workers" in one.stderr


def test_zero2_single_rank_does_the_same_math_as_the_local_engine(tiny_wan, video_shards, tmp_path):
    from training.trainer import Trainer

    overrides = ["train.max_steps=4", "checkpoint.every_steps=4", "optim.warmup_steps=2",
                 "optim.max_grad_norm=0.05"]  # warm-up and active clipping both go through DeepSpeed
    local = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=local",
                                "log.tensorboard=false", *overrides)).run()
    _ok(run_ranks(1, TINY, f"model.path={tiny_wan}", f"data.shards={video_shards}", f"output_dir={tmp_path}",
                  "run_name=ds", "deepspeed.zero_stage=2", *overrides))
    ds_losses = [json.loads(line)["loss"] for line in (tmp_path / "ds/logs/metrics.jsonl").read_text().splitlines()]
    assert ds_losses == pytest.approx([local.losses[s] for s in sorted(local.losses)], rel=1e-5)
    a = load_adapter_tensors(local.final_checkpoint)
    b = load_adapter_tensors(tmp_path / "ds/checkpoints/step-0000004")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_more_ranks_than_shards_fails_before_loading(tiny_wan, tmp_path):
    from training.data.synthetic import make_data
    one = tmp_path / "one"
    make_data("video", one, shards=1, samples_per_shard=8, seed=0, size=(32, 32), frames=9)
    proc = run_ranks(2, TINY, f"model.path={tiny_wan}", f"data.shards={one}", f"output_dir={tmp_path}")
    assert proc.returncode != 0
    assert "1 shard(s) cannot be split over 2 data workers" in proc.stderr


def _bf16_representable(t: torch.Tensor) -> bool:
    return bool(torch.equal(t.bfloat16().float(), t))


@pytest.mark.parametrize("stage", [0, 3])  # unpartitioned and fully partitioned (ZeRO-2 lies between)
def test_bf16_under_zero_keeps_fp32_masters_and_fp32_kept_modules(stage, tiny_wan, video_shards, tmp_path):
    """bf16 under DeepSpeed = the local bf16 run: same losses, fp32 LoRA masters saved, Wan's
    fp32-kept modules (scale_shift_table, norms, time embedder) still fp32 on every rank."""
    from training.trainer import Trainer

    overrides = ["train.max_steps=2", "checkpoint.every_steps=2", "optim.warmup_steps=0",
                 "model.mixed_precision=bf16"]
    common = [f"model.path={tiny_wan}", f"data.shards={video_shards}", f"output_dir={tmp_path}", "run_name=ds",
              *overrides]
    ranks = 2 if stage == 3 else 1
    ds_args = ([f"deepspeed.config={_zero3_json(tmp_path)}"] if stage == 3 else [f"deepspeed.zero_stage={stage}"])
    _ok(run_ranks(ranks, TINY, *common, *ds_args))
    saved = load_adapter_tensors(tmp_path / "ds/checkpoints/step-0000002")
    b = [v for k, v in saved.items() if "lora_B" in k]
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert not all(_bf16_representable(v) for v in b), "the saved adapter is bf16-rounded, not the fp32 masters"
    if ranks == 1:  # one rank sees the same data as one process: the math must agree
        local = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path, "run_name=local",
                                    "log.tensorboard=false", *overrides)).run()
        ds_losses = [json.loads(line)["loss"] for line in (tmp_path / "ds/logs/metrics.jsonl").read_text().splitlines()]
        assert ds_losses == pytest.approx([local.losses[s] for s in sorted(local.losses)], rel=1e-5)
        a = load_adapter_tensors(local.final_checkpoint)
        assert max((a[k] - saved[k]).abs().max().item() for k in a) < 1e-6
    dtypes = json.loads((tmp_path / "ds/result.json").read_text())["param_dtypes"]
    assert dtypes["trainable"] and set(dtypes["trainable"]) == {"fp32"}
    assert dtypes["kept_fp32_modules"] == ["fp32"]  # rank 0 after engine.prepare, ZeRO-3 partitions included
    assert set(dtypes["frozen"]) == {"bf16", "fp32"} and dtypes["frozen"]["bf16"] > dtypes["frozen"]["fp32"]
