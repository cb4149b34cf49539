"""Adapters made by the real libraries (peft, diffusers, our trainer) from a tiny Wan, once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

# Several ranks and alphas, so that per-module values must survive every format.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
RANK_PATTERN = {"blocks.1.attn1.to_q": 2}
ALPHA_PATTERN = {"blocks.0.ffn.net.0.proj": 3}


def lora_cfg(**kw):
    from peft import LoraConfig
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "rank_pattern": RANK_PATTERN,
                         "alpha_pattern": ALPHA_PATTERN, **kw})


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Nonzero A and B (a trained adapter), deterministic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def wan_inputs() -> dict:
    g = torch.Generator().manual_seed(123)
    return {"hidden_states": torch.randn(1, 16, 2, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 8, 32, generator=g), "timestep": torch.tensor([300.0])}


def forward(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**wan_inputs(), return_dict=False)[0]


@pytest.fixture(scope="session")
def new_wan(tiny_wan) -> Callable[..., torch.nn.Module]:
    """Factory: a fresh tiny Wan transformer (``layers`` != 2 gives a random one of that depth)."""
    from diffusers import WanTransformer3DModel

    def make(layers: int = 2) -> torch.nn.Module:
        if layers == 2:
            return WanTransformer3DModel.from_pretrained(str(tiny_wan / "transformer"))
        torch.manual_seed(0)
        cfg = dict(WanTransformer3DModel.load_config(str(tiny_wan / "transformer")), num_layers=layers)
        return WanTransformer3DModel.from_config(cfg)
    return make


@dataclass
class Source:
    model: torch.nn.Module      # the trained model, adapter "default" active
    output: torch.Tensor        # its forward on wan_inputs()
    peft: Path                  # PeftModel.save_pretrained folder
    diffusers: Path             # WanPipeline.save_lora_weights file
    root: Path


def save_diffusers(model: torch.nn.Module, out: Path, cfg) -> Path:
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict
    layers = get_peft_model_state_dict(model, adapter_name="default")
    WanPipeline.save_lora_weights(str(out), transformer_lora_layers=layers, transformer_lora_adapter_metadata=cfg.to_dict())
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="session")
def source(new_wan, tmp_path_factory) -> Source:
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    root = tmp_path_factory.mktemp("lora-src")
    tr = new_wan()
    tr.add_adapter(lora_cfg(), adapter_name="default")
    randomise(tr, seed=1)
    diffusers_file = save_diffusers(tr, root / "diffusers", lora_cfg())
    pm = get_peft_model(new_wan(), lora_cfg())  # PEFT's own wrapper and prefixes
    set_peft_model_state_dict(pm, {"base_model.model." + k: v for k, v in get_peft_model_state_dict(tr).items()})
    pm.save_pretrained(str(root / "peft"))
    return Source(tr, forward(tr), root / "peft", diffusers_file, root)


@dataclass
class Trained:
    checkpoint: Path            # a lorabench checkpoint folder (both layouts + manifest)
    output: torch.Tensor        # the trainer's own model, forward on wan_inputs()


@pytest.fixture(scope="session")
def trained(tiny_wan, video_shards, tmp_path_factory) -> Trained:
    from training.trainer import Trainer

    from ...conftest import tiny_config
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path_factory.mktemp("adapter-run"), "train.max_steps=5",
                      "checkpoint.every_steps=5", "log.tensorboard=false")
    trainer = Trainer(cfg)
    result = trainer.run()
    trainer.model.eval()
    return Trained(result.final_checkpoint, forward(trainer.model))
