"""Rectified-flow (flow-matching) objective, as used by SD3 and Wan. Pure tensor functions.

x_t = (1 - sigma) * x_0 + sigma * noise,   target velocity v = noise - x_0,
with sigma drawn from a logit-normal (SD3 paper, sec. 3.1) or uniform distribution and then
shifted by the scheduler's own shift: sigma' = shift * s / (1 + (shift - 1) * s), which is the
same mapping FlowMatchEulerDiscreteScheduler and UniPC (flow mode) apply at inference.
"""

from __future__ import annotations

import torch


def sample_sigmas(batch: int, generator: torch.Generator, mode: str = "logit_normal",
                  logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Unshifted sigmas in (0, 1), drawn on the generator's device (CPU for reproducibility)."""
    if mode == "logit_normal":
        z = torch.randn(batch, generator=generator) * logit_std + logit_mean
        return torch.sigmoid(z)
    if mode == "uniform":
        return torch.rand(batch, generator=generator)
    raise ValueError(f"unknown timestep sampling mode {mode!r} (use logit_normal or uniform)")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    if shift <= 0:
        raise ValueError(f"flow shift must be > 0, got {shift}")
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def noisy_and_target(latents: torch.Tensor, noise: torch.Tensor,
                     sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate towards noise and return (x_t, velocity target); sigmas has shape (B,)."""
    s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1.0 - s) * latents + s * noise, noise - latents
