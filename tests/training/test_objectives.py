"""The flow-matching math against diffusers' own schedulers (the reference), not our own output."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from training.objectives import noisy_and_target, sample_sigmas, shift_sigmas
from training.schedule import lr_at


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_shift_matches_flow_match_euler_scheduler(shift):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    unshifted = torch.linspace(1.0, 1 / 1000, 1000)
    assert torch.allclose(shift_sigmas(unshifted, shift), sched.sigmas[:1000].float(), atol=1e-6)


def test_shift_matches_unipc_flow_sigmas_at_inference():
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(10)
    sig = sched.sigmas[:-1].float()  # UniPC appends the final sigma
    # UniPC spaces unshifted sigmas linearly from 1 - 1/N_train... then applies the same shift.
    unshifted = sig / (3.0 - 2.0 * sig)  # inverse of the shift
    assert torch.allclose(shift_sigmas(unshifted, 3.0), sig, atol=1e-6)


def test_noisy_sample_matches_scheduler_scale_noise():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    idx = torch.tensor([100, 700])
    sigmas = sched.sigmas[idx]
    want = sched.scale_noise(x0, sched.timesteps[idx], noise)
    got, target = noisy_and_target(x0, noise, sigmas)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(target, noise - x0)


def test_sigma_sampling_is_seeded_and_in_range():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = sample_sigmas(1000, g1), sample_sigmas(1000, g2)
    assert torch.equal(a, b) and a.min() > 0 and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.05  # logit-normal(0, 1) is centred on 0.5
    u = sample_sigmas(4000, torch.Generator().manual_seed(0), mode="uniform")
    assert abs(u.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        sample_sigmas(2, g1, mode="beta")


def test_lr_schedule():
    kw = dict(lr=1.0, warmup_steps=10, max_steps=110)
    assert lr_at(0, schedule="constant", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="constant", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(60, schedule="linear", min_lr_ratio=0.2, **kw) == pytest.approx(0.6)
