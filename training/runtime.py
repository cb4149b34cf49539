"""Device, precision and attention-backend switches, resolved once and validated up front."""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from .errors import LorabenchError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RuntimeConfigError(LorabenchError, ValueError):
    """A switch asks for something this machine cannot do."""


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeConfigError("a CUDA device was asked for (train.device=cuda, sampling.device=cuda or "
                                 "parallel.use_gpu=true) but none is visible here; use auto or cpu")
    return torch.device(choice)


@dataclass(frozen=True)
class Precision:
    """Mixed precision: frozen base weights in ``dtype``, LoRA master weights in fp32."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    def autocast(self) -> ContextManager[Any]:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @classmethod
    def resolve(cls, name: str, device: torch.device) -> "Precision":
        if name == "fp16" and device.type != "cuda":
            raise RuntimeConfigError(
                "model.mixed_precision=fp16 needs CUDA (fp16 training needs loss scaling on a GPU); "
                "on CPU use bf16 or fp32")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeConfigError("model.mixed_precision=bf16 is not supported by this GPU; use fp16")
        return cls(name, device)


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_attention(choice: str, device: torch.device) -> str:
    """'auto' -> xformers on CUDA when installed, else SDPA; an impossible request is an error."""
    if choice == "xformers":
        if device.type != "cuda":
            raise RuntimeConfigError("model.attention=xformers needs a CUDA device; use auto or sdpa")
        if not xformers_available():
            raise RuntimeConfigError("model.attention=xformers but xformers is not installed: "
                                     "pip install 'lorabench[gpu]', or use auto or sdpa")
        return "xformers"
    if choice == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    return "sdpa"


def apply_attention(model: torch.nn.Module, backend: str) -> None:
    """Switch every attention module of a diffusers model to ``backend`` ('sdpa' | 'xformers')."""
    if backend == "sdpa":
        return  # diffusers' default processors already call torch SDPA
    processors = [m.processor for m in model.modules() if hasattr(m, "processor")]
    if processors and all(hasattr(p, "_attention_backend") for p in processors):
        model.set_attention_backend("xformers")  # dispatcher-based models (Wan, ...)
    else:
        model.enable_xformers_memory_efficient_attention()  # processor-based models (SD3, ...)


def device_name(device: torch.device) -> str:
    """What the training runs on, as the MFU's peak lookup reads it (``NVIDIA H100 80GB HBM3``, ``cpu``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated accelerator memory, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
