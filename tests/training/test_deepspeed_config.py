"""The DeepSpeed JSON is resolved from the run config; conflicts are refused with the field named."""

import json

import pytest

from training.config import ConfigError, load_config

from ..conftest import CONFIGS

BASE = {"run_name": "r", "model": {"path": "m"}, "data": {"shards": "d"},
        "train": {"batch_size": 4, "grad_accum": 2}, "optim": {"max_grad_norm": 0.5}}


def _cfg(*overrides):
    """The engine settings of a run config with ``overrides`` (what the DeepSpeed engine receives)."""
    from training.engines import EngineSettings
    return EngineSettings.from_run_config(load_config(None, list(overrides), base=json.loads(json.dumps(BASE))))


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_shipped_deepspeed_configs_resolve(name, stage):
    from training.engines.zero import resolve_deepspeed_config
    ds = resolve_deepspeed_config(_cfg(f"deepspeed.config={CONFIGS / 'deepspeed' / name}",
                                       "model.mixed_precision=bf16"), world_size=4)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 2)
    assert ds["train_batch_size"] == 4 * 2 * 4 and ds["gradient_clipping"] == 0.5
    # bf16 is lorabench's (bf16 base + autocast + fp32 LoRA masters): DeepSpeed's bf16 mode stays
    # off, or it would cast the fp32-kept modules and the LoRA masters to bf16.
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(ds)


def test_zero_stage_alone_and_override():
    from training.engines.zero import resolve_deepspeed_config
    assert resolve_deepspeed_config(_cfg("deepspeed.zero_stage=3"), 1)["zero_optimization"]["stage"] == 3
    path = CONFIGS / "deepspeed" / "zero2.json"
    ds = resolve_deepspeed_config(_cfg(f"deepspeed.config={path}", "deepspeed.zero_stage=0"), 1)
    assert ds["zero_optimization"]["stage"] == 0


@pytest.mark.parametrize("body, message", [
    ({"train_micro_batch_size_per_gpu": 2}, r"train_micro_batch_size_per_gpu=2 disagrees with train.batch_size=4"),
    ({"optimizer": {"type": "AdamW"}}, r"remove the 'optimizer' section"),
    ({"bf16": {"enabled": True}}, r"bf16.enabled=True disagrees with model.mixed_precision=fp32"),
])
def test_conflicting_deepspeed_json_is_refused(tmp_path, body, message):
    from training.engines.zero import resolve_deepspeed_config
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match=message) as e:
        resolve_deepspeed_config(_cfg(f"deepspeed.config={path}"), 1)
    assert str(path) in str(e.value)


def test_deepspeed_bf16_mode_is_refused_with_the_reason(tmp_path):
    from training.engines.zero import resolve_deepspeed_config
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="would cast the fp32-kept modules and the LoRA to bf16"):
        resolve_deepspeed_config(_cfg(f"deepspeed.config={path}", "model.mixed_precision=bf16"), 1)


def test_missing_or_broken_deepspeed_json(tmp_path):
    from training.engines.zero import resolve_deepspeed_config
    with pytest.raises(ConfigError, match="no such file"):
        resolve_deepspeed_config(_cfg(f"deepspeed.config={tmp_path / 'nope.json'}"), 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_deepspeed_config(_cfg(f"deepspeed.config={bad}"), 1)


def test_parallel_settings_are_checked():
    with pytest.raises(ConfigError, match="needs parallel.backend=ray .*torchrun --nproc-per-node 2"):
        _cfg("parallel.num_workers=2")
    with pytest.raises(ConfigError, match="debug.crash_rank=2 but only 2 worker"):
        _cfg("parallel.backend=ray", "parallel.num_workers=2", "debug.crash_at_step=3", "debug.crash_rank=2")
