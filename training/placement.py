"""Where each pipeline component lives during training: on the accelerator, or offloaded.

The denoiser always lives on the training device. The VAE and text encoders are only used to
encode each batch; with ``model.offload_encoders`` they stay in CPU memory and are moved to
the device one at a time around their use (the same trade diffusers' model CPU offload makes
at inference), so the accelerator never holds umT5-XXL (~11 GB in bf16) next to the denoiser.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .precision import component_role


@dataclass
class Placement:
    device: torch.device
    offload: bool
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # offloadable encoders by name

    @classmethod
    def for_pipeline(cls, pipe: Any, device: torch.device, offload: bool) -> "Placement":
        """Move the pipeline's components to where they live; returns the placement."""
        placement = cls(device, offload and device.type != "cpu")
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            role = component_role(name)
            if role in ("vae", "text"):
                placement.modules[name] = module
                module.to("cpu" if placement.offload else device)
            else:
                module.to(device)
        return placement

    @property
    def text_encoders(self) -> list[str]:
        return [n for n in self.modules if component_role(n) == "text"]

    @contextlib.contextmanager
    def use(self, *names: str) -> Iterator[None]:
        """Have ``names`` on the device inside the block (a no-op unless offloading)."""
        if not self.offload:
            yield
            return
        moved = [self.modules[n] for n in names if n in self.modules]
        for m in moved:
            m.to(self.device, non_blocking=True)
        try:
            yield
        finally:
            for m in moved:
                m.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
