"""The memory plan counts, from configs alone, exactly what loading and LoRA injection create.

Real tiny models from the fixtures, loaded through the same ``load_pipeline`` the trainer uses;
no mocks. Activations are an estimate: only their direction is tested (checkpointing lowers them).
"""

from __future__ import annotations

import json

import pytest
import torch

from training.lora import inject_lora, peft_config
from training.memory_plan import (ACCELERATOR, OFFLOADED, latent_tokens, plan_components,
                                  plan_training)
from training.models import get_spec
from training.models.real_configs import write_config_folder
from training.precision import ComponentDtypes

from ..conftest import tiny_config

DTYPES = ComponentDtypes(denoiser="bf16", vae="fp32", text="bf16")

FOLDERS = {"wan": "tiny_wan", "wan-ti2v": "tiny_wan_ti2v", "sd3": "tiny_sd3"}
FAMILY = {"wan": "wan", "wan-ti2v": "wan", "sd3": "sd3"}


def loaded_bytes(module: torch.nn.Module) -> int:
    """Bytes of a loaded module's parameters and persistent buffers (tied parameters once)."""
    persistent = set(module.state_dict(keep_vars=True))
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    return total + sum(b.numel() * b.element_size() for n, b in module.named_buffers() if n in persistent)


def plan_cfg(family: str, model, tmp_path, *overrides: str):
    # plan_training reads configs only: the shards are never opened.
    return tiny_config(family, model, "unused-shards", tmp_path, *overrides)


@pytest.mark.parametrize("which", list(FOLDERS))
def test_component_bytes_equal_the_loaded_pipeline(which, request):
    path = request.getfixturevalue(FOLDERS[which])
    family = FAMILY[which]
    planned = {c.name: c for c in plan_components(path, family, DTYPES)}
    pipe = get_spec(family).load_pipeline(path, dtype=DTYPES)
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert set(planned) == set(modules)
    for name, module in modules.items():
        c = planned[name]
        assert c.bytes == loaded_bytes(module), name
        assert c.params == sum(p.numel() for p in module.parameters()), name
        assert c.dtype == DTYPES.name_for(name)
        kept = sum(p.numel() for p in module.parameters()
                   if p.dtype == torch.float32 and c.dtype != "fp32")
        assert c.fp32_params == kept, name
    if family == "wan":
        # Wan keeps its norms, time embedder and scale/shift tables in fp32: the plan must too.
        assert planned["transformer"].fp32_params > 0
        assert planned["transformer"].dtype == "bf16"


@pytest.mark.parametrize("which", ["wan", "sd3"])
def test_lora_count_equals_inject_lora(which, request, tmp_path):
    path = request.getfixturevalue(FOLDERS[which])
    family = FAMILY[which]
    cfg = plan_cfg(family, path, tmp_path, "model.mixed_precision=bf16", "lora.rank=4")
    plan = plan_training(cfg)
    spec = get_spec(family)
    targets = cfg.lora.target_modules or spec.default_lora_targets
    model = spec.load_pipeline(path, dtype=DTYPES).transformer
    adapted = inject_lora(model, peft_config(4, 4.0, 0.0, targets), seed=0)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert plan.lora.params == sum(p.numel() for p in lora)
    assert plan.lora.modules == len(adapted)
    # fp32 weights + grads + AdamW moments, nothing partitioned on one rank.
    assert plan.lora.total == 16 * plan.lora.params
    assert all(p.dtype == torch.float32 for p in lora)


def test_checkpointing_lowers_the_activation_estimate(tiny_wan, tmp_path):
    off = plan_training(plan_cfg("wan", tiny_wan, tmp_path, "model.gradient_checkpointing=false"))
    on = plan_training(plan_cfg("wan", tiny_wan, tmp_path, "model.gradient_checkpointing=true"))
    assert on.activations.used == on.activations.with_checkpointing
    assert off.activations.used == off.activations.without_checkpointing
    assert on.activations.used < off.activations.used
    assert on.accelerator_peak() < off.accelerator_peak()
    # tokens = latent frames x (H / spatial / patch) x (W / spatial / patch), times the batch
    cfg = plan_cfg("wan", tiny_wan, tmp_path)
    geo = get_spec("wan").geometry(tiny_wan)
    per_sample = ((cfg.data.frames - 1) // geo.temporal + 1) * (cfg.data.height // geo.spatial // geo.patch[0]) \
        * (cfg.data.width // geo.spatial // geo.patch[1])
    assert latent_tokens(get_spec("wan"), tiny_wan, cfg.data.width, cfg.data.height, cfg.data.frames) == per_sample
    assert on.activations.tokens == per_sample * cfg.train.batch_size
    text = on.table()
    assert "ESTIMATE" in text and "<- used" in text


@pytest.mark.parametrize("which", ["wan-ti2v", "sd3"])
def test_offload_moves_encoders_to_cpu_and_lowers_the_peak(which, request, tmp_path):
    path = request.getfixturevalue(FOLDERS[which])
    family = FAMILY[which]
    resident = plan_training(plan_cfg(family, path, tmp_path, "model.mixed_precision=bf16"))
    offload = plan_training(plan_cfg(family, path, tmp_path, "model.mixed_precision=bf16",
                                     "model.offload_encoders=true"))
    for c in offload.components:
        assert c.where == (ACCELERATOR if c.role == "denoiser" else OFFLOADED), c.name
    assert all(c.where == ACCELERATOR for c in resident.components)
    encoders = [c.bytes for c in offload.components if c.role != "denoiser"]
    # one encoder at a time on the accelerator: the peak drops by all but the largest
    assert resident.accelerator_peak() - offload.accelerator_peak() == sum(encoders) - max(encoders)
    assert offload.accelerator_peak() < resident.accelerator_peak()
    assert offload.cpu_ram == sum(encoders) and resident.cpu_ram == 0


def test_zero3_on_two_ranks_divides_the_frozen_denoiser(tiny_wan, tmp_path):
    one = plan_training(plan_cfg("wan", tiny_wan, tmp_path))
    z3 = plan_training(plan_cfg("wan", tiny_wan, tmp_path, "deepspeed.zero_stage=3"), world_size=2)
    assert z3.zero_stage == 3
    for a, b in zip(one.components, z3.components):
        if a.role == "denoiser":  # parameters partitioned, buffers whole on every rank
            assert z3.component_bytes_on_rank(b) == -(-(a.bytes - a.buffer_bytes) // 2) + a.buffer_bytes
            assert z3.component_bytes_on_rank(b) < a.bytes
        else:
            assert z3.component_bytes_on_rank(b) == a.bytes
    p = one.lora.params
    assert (z3.lora.weights, z3.lora.grads, z3.lora.optimizer, z3.lora.master) == (2 * p, 2 * p, 4 * p, 2 * p)
    assert z3.resident < one.resident


def test_zero2_partitions_grads_and_optimizer_not_weights(tiny_wan, tmp_path):
    z2 = plan_training(plan_cfg("wan", tiny_wan, tmp_path, "deepspeed.zero_stage=2"), world_size=4)
    p = z2.lora.params
    assert (z2.lora.weights, z2.lora.grads, z2.lora.optimizer, z2.lora.master) == (4 * p, p, 2 * p, p)
    assert z2.resident == plan_training(plan_cfg("wan", tiny_wan, tmp_path)).resident


def test_plan_is_json_safe_and_labels_estimates(tiny_sd3, tmp_path):
    plan = plan_training(plan_cfg("sd3", tiny_sd3, tmp_path, "model.gradient_checkpointing=true"))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["activations_estimate"]["estimate"] is True
    assert data["accelerator_peak_per_rank_estimate"] == plan.accelerator_peak()
    assert plan.activations.context_tokens > 0  # SD3's text tokens run through every block
    den = next(c for c in plan.components if c.role == "denoiser")
    assert den.buffer_bytes > 0  # SD3's persistent pos_embed table
    table = plan.table()
    for c in plan.components:
        assert c.name in table and c.class_name in table
    assert "GiB" in table and "estimate" in table


def test_real_configs_count_the_released_sizes(tmp_path):
    """Full-size configs on the meta device: the published parameter counts, no weights."""
    folder = write_config_folder("wan2.2-ti2v-5b", tmp_path / "ti2v")
    sizes = {c.name: c.params for c in plan_components(folder, "wan", DTYPES)}
    assert 4.9e9 < sizes["transformer"] < 5.1e9        # "5B"
    assert 5.6e9 < sizes["text_encoder"] < 5.8e9       # umT5-XXL encoder
    short = write_config_folder("sd3.5-medium", tmp_path / "sd3", layers=2)
    cfg = json.loads((short / "transformer" / "config.json").read_text())
    assert cfg["num_layers"] == 2 and cfg["dual_attention_layers"] == [0, 1]
