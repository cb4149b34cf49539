"""Adapter proof in the precisions real models run in: bf16 pipelines, real layer widths."""

import pytest
import torch
from safetensors.torch import save_file

from training.adapters import load_adapter, verify_effect, weight_deltas
from training.models import get_spec


class _Wide(torch.nn.Module):
    """One Wan2.2-TI2V-5B FFN projection (3072 -> 14336), the layer whose fp32 norm drifted."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3072, 14336, bias=False)


def test_real_width_delta_norms_agree_to_fp32_rounding(tmp_path):
    g = torch.Generator().manual_seed(0)
    rank = 32
    # A trained-looking adapter: kaiming-scale A, small B (lr-sized updates)
    a = torch.randn(rank, 3072, generator=g) / 3072 ** 0.5
    b = torch.randn(14336, rank, generator=g) * 1e-3
    path = tmp_path / "wide.safetensors"
    save_file({"proj.lora_A.weight": a.contiguous(), "proj.lora_B.weight": b.contiguous()}, str(path))
    model = _Wide()
    rep = load_adapter(model, path)
    deltas = weight_deltas(model)
    # The same tensors, so the same float64 norm: no drift beyond fp32 rounding (an fp32 norm of
    # the 44M-element delta was ~1e-4 relative off and refused a correct adapter).
    assert deltas["proj"] == pytest.approx(rep.delta_norms["proj"], rel=4 * torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("family", ["wan", "sd3"])
def test_verify_effect_on_a_bf16_pipeline(family, tiny_wan, tiny_sd3, tmp_path):
    """bf16 weights with diffusers' fp32-kept modules: inputs follow the compute dtype."""
    from training.trainer import Trainer

    from ...conftest import tiny_config
    model_dir = tiny_wan if family == "wan" else tiny_sd3
    spec = get_spec(family)
    pipe = spec.load_pipeline(model_dir, dtype=torch.bfloat16)
    tr = pipe.transformer
    if family == "wan":  # the first parameter is the fp32-kept scale_shift_table
        assert next(tr.parameters()).dtype == torch.float32
    # A real adapter with nonzero B: the tiny model's own trained checkpoint
    shards = _shards(family, tmp_path)
    cfg = tiny_config(family, model_dir, shards, tmp_path, "train.max_steps=2", "checkpoint.every_steps=2",
                      "log.tensorboard=false", "optim.warmup_steps=0")
    ckpt = Trainer(cfg).run().final_checkpoint
    rep = load_adapter(pipe, ckpt)
    diff = verify_effect(pipe, spec, rep)
    assert diff > 0 and rep.effect_max_diff == diff


def _shards(family, tmp_path):
    from training.data.synthetic import make_data
    out = tmp_path / "data"
    if family == "wan":
        make_data("video", out, shards=1, samples_per_shard=8, seed=0, size=(32, 32), frames=9)
    else:
        make_data("image", out, shards=1, samples_per_shard=8, seed=0, size=(32, 32))
    return out
