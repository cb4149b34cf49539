"""Training FLOPs counted on the meta device (training.flops) against the same count on real tensors."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from training.config import load_config
from training.flops import mfu, peak_flops, training_flops
from training.models import get_spec
from training.models.base import Conditions


@pytest.mark.parametrize("family", ["wan", "sd3"])
def test_meta_count_equals_real_tensors_forward_and_backward(family, request, tmp_path):
    from tests.conftest import tiny_config
    model_dir = request.getfixturevalue(f"tiny_{family}")
    cfg = tiny_config(family, model_dir, "unused", tmp_path)
    got = training_flops(cfg)
    # The same sample on real tensors with the real weights; attention through its math kernel,
    # the one meta tensors take (the fused CPU kernel has no FLOP formula).
    spec = get_spec(family)
    pipe = spec.load_pipeline(model_dir)
    model = pipe.transformer.requires_grad_(False)
    shapes = spec.cache_shapes(model_dir, cfg.data.width, cfg.data.height, cfg.data.frames,
                               cfg.data.max_text_length or spec.default_max_text_length)
    latent = torch.randn((1, *shapes["posterior.mean"][1]), requires_grad=True)
    cond = Conditions({k.split(".", 1)[1]: torch.randn((1, *s)) for k, (_, s) in shapes.items() if k.startswith("cond.")})
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            out = spec.predict(pipe, model, latent, torch.full((1,), 500), cond)
        with FlopCounterMode(display=False) as bwd:
            out.sum().backward()
    assert (got.forward, got.backward) == (fwd.get_total_flops(), bwd.get_total_flops())
    assert got.forward > 0 and got.backward > 0 and got.per_sample == got.forward + got.backward
    assert got.tokens > 0


def test_peak_lookup_and_mfu():
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA GH200 480GB") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(None) is None and peak_flops("Intel Xeon") is None
    # 1e12 FLOPs per sample at 100 samples/s on 2 devices of 1e15 peak: 5% of peak
    assert mfu(10**12, 100.0, 2, 1e15) == pytest.approx(0.05)
    assert mfu(10**12, 100.0, 2, None) is None


@pytest.mark.parametrize("config, name", [("wan2.1-t2v-1.3b-lora", "wan2.1-t2v-1.3b"),
                                          ("wan2.2-ti2v-5b-lora", "wan2.2-ti2v-5b"),
                                          ("sd3.5-medium-lora", "sd3.5-medium")])
def test_real_configs_at_real_shapes_match_the_two_flops_per_weight_and_token_rule(config, name, tmp_path):
    """The released denoisers (configs only, on meta) at the shipped configs' own shapes: the
    forward is ~2 FLOPs per weight and latent token plus attention (Wan: between 2*P*S and a few
    times that). SD3's MMDiT spends about half its weights on the text stream, which sees the
    333 text tokens, not the 4,096 latent ones: 0.61 x 2*P*S. The leaderboard's MFU rests on it."""
    from tests.conftest import CONFIGS
    from training.memory_plan import _meta_module
    from training.models.real_configs import write_config_folder
    import json
    folder = write_config_folder(name, tmp_path / name)
    cfg = load_config(CONFIGS / "train" / f"{config}.yaml", [f"model.path={folder}"])
    got = training_flops(cfg)
    index = json.loads((folder / "model_index.json").read_text())
    denoiser = _meta_module(*index["transformer"], folder / "transformer", torch.bfloat16)
    params = sum(p.numel() for p in denoiser.parameters())
    rule = 2 * params * got.tokens
    low = 0.5 if name.startswith("sd3") else 1.0
    assert low * rule <= got.forward <= 4 * rule, (got.to_dict(), params)
    assert 0.3 * got.forward <= got.backward <= 3 * got.forward
