"""The released configurations of the full-size models this package trains, in one place.

Only the JSON configs (``model_index.json`` and each component's ``config.json``), never
weights: enough to instantiate every component on the meta device and count its parameters
(``training.memory_plan``), or to build a few-layer model at the real width
(``write_config_folder(..., layers=2)``) for measurements.

Values follow the diffusers-format repositories named in each entry. Two kinds of value are
deliberately not the released ones, because nothing here depends on them:

- Wan2.2's VAE ``latents_mean``/``latents_std`` (48 per-channel normalisation statistics) are
  placeholders (0 and 1): they scale latents, they hold no parameters;
- tokenizer folders are named in ``model_index.json`` but not written (no vocabulary files).

Scheduler configs are written (``scheduler/scheduler_config.json``) so the folders look like a
real checkout; ``dtype``/``torch_dtype`` entries are left out (the loader's dtype decides).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

# ----------------------------------------------------------------------------- shared pieces

def _t5_xxl_encoder(architecture: str, model_type: str, vocab_size: int, **extra: Any) -> dict[str, Any]:
    """The T5-XXL encoder geometry shared by google/t5-v1_1-xxl and google/umt5-xxl."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "d_model": 4096,
        "d_ff": 10240,
        "d_kv": 64,
        "num_heads": 64,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "vocab_size": vocab_size,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.1,
        "classifier_dropout": 0.0,
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "tie_word_embeddings": False,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "use_cache": True,
        **extra,
    }


# google/umt5-xxl encoder as shipped in the Wan repos' text_encoder/config.json
# (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan-AI/Wan2.2-TI2V-5B-Diffusers).
_UMT5_XXL = _t5_xxl_encoder("UMT5EncoderModel", "umt5", 256384, scalable_attention=True,
                            tokenizer_class="T5Tokenizer")

# Wan's released flow-matching scheduler: UniPC with flow sigmas and a resolution-dependent shift.
def _wan_scheduler(flow_shift: float) -> dict[str, Any]:
    return {
        "_class_name": "UniPCMultistepScheduler",
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": flow_shift,
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": True,
        "lower_order_final": True,
    }


def _wan_index(expand_timesteps: bool) -> dict[str, Any]:
    return {
        "_class_name": "WanPipeline",
        "boundary_ratio": None,
        "expand_timesteps": expand_timesteps,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }


def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, projection: int,
               act: str) -> dict[str, Any]:
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "model_type": "clip_text_model",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "projection_dim": projection,
        "hidden_act": act,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


# ----------------------------------------------------------------------------- the models

REAL_CONFIGS: dict[str, dict[str, Any]] = {
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers
    "wan2.2-ti2v-5b": {
        "model_index": _wan_index(expand_timesteps=True),
        "components": {
            "transformer": {
                "_class_name": "WanTransformer3DModel",
                "patch_size": [1, 2, 2],
                "num_attention_heads": 24,
                "attention_head_dim": 128,
                "in_channels": 48,
                "out_channels": 48,
                "text_dim": 4096,
                "freq_dim": 256,
                "ffn_dim": 14336,
                "num_layers": 30,
                "cross_attn_norm": True,
                "qk_norm": "rms_norm_across_heads",
                "eps": 1e-6,
                "image_dim": None,
                "added_kv_proj_dim": None,
                "rope_max_seq_len": 1024,
                "pos_embed_seq_len": None,
            },
            # The Wan2.2 VAE: residual blocks, 2x2 patchify inside (12 = 3 x 2 x 2 channels), 48
            # latent channels, 16x spatial and 4x temporal compression.
            "vae": {
                "_class_name": "AutoencoderKLWan",
                "base_dim": 160,
                "decoder_base_dim": 256,
                "z_dim": 48,
                "dim_mult": [1, 2, 4, 4],
                "num_res_blocks": 2,
                "attn_scales": [],
                "temperal_downsample": [False, True, True],
                "dropout": 0.0,
                "is_residual": True,
                "in_channels": 12,
                "out_channels": 12,
                "patch_size": 2,
                "scale_factor_spatial": 16,
                "scale_factor_temporal": 4,
                "latents_mean": [0.0] * 48,   # placeholders, see the module docstring
                "latents_std": [1.0] * 48,
            },
            "text_encoder": _UMT5_XXL,
            "scheduler": _wan_scheduler(flow_shift=5.0),
        },
    },
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers
    "wan2.1-t2v-1.3b": {
        "model_index": _wan_index(expand_timesteps=False),
        "components": {
            "transformer": {
                "_class_name": "WanTransformer3DModel",
                "patch_size": [1, 2, 2],
                "num_attention_heads": 12,
                "attention_head_dim": 128,
                "in_channels": 16,
                "out_channels": 16,
                "text_dim": 4096,
                "freq_dim": 256,
                "ffn_dim": 8960,
                "num_layers": 30,
                "cross_attn_norm": True,
                "qk_norm": "rms_norm_across_heads",
                "eps": 1e-6,
                "image_dim": None,
                "added_kv_proj_dim": None,
                "rope_max_seq_len": 1024,
            },
            # AutoencoderKLWan's defaults are the Wan2.1 VAE (including its latents_mean/std).
            "vae": {
                "_class_name": "AutoencoderKLWan",
                "base_dim": 96,
                "z_dim": 16,
                "dim_mult": [1, 2, 4, 4],
                "num_res_blocks": 2,
                "attn_scales": [],
                "temperal_downsample": [False, True, True],
                "dropout": 0.0,
            },
            "text_encoder": _UMT5_XXL,
            "scheduler": _wan_scheduler(flow_shift=3.0),
        },
    },
    # stabilityai/stable-diffusion-3.5-medium
    "sd3.5-medium": {
        "model_index": {
            "_class_name": "StableDiffusion3Pipeline",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_3": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "tokenizer_3": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "SD3Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
        "components": {
            # MMDiT-X: 24 joint blocks, the first 13 with a second (image-only) attention.
            "transformer": {
                "_class_name": "SD3Transformer2DModel",
                "sample_size": 128,
                "patch_size": 2,
                "in_channels": 16,
                "out_channels": 16,
                "num_layers": 24,
                "attention_head_dim": 64,
                "num_attention_heads": 24,
                "joint_attention_dim": 4096,
                "caption_projection_dim": 1536,
                "pooled_projection_dim": 2048,
                "pos_embed_max_size": 384,
                "dual_attention_layers": list(range(13)),
                "qk_norm": "rms_norm",
            },
            "vae": {
                "_class_name": "AutoencoderKL",
                "in_channels": 3,
                "out_channels": 3,
                "latent_channels": 16,
                "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4,
                "layers_per_block": 2,
                "act_fn": "silu",
                "norm_num_groups": 32,
                "sample_size": 1024,
                "scaling_factor": 1.5305,
                "shift_factor": 0.0609,
                "force_upcast": True,
                "latents_mean": None,
                "latents_std": None,
                "mid_block_add_attention": True,
                "use_quant_conv": False,
                "use_post_quant_conv": False,
            },
            # CLIP-L/14 (OpenAI) and CLIP-bigG/14 (OpenCLIP) text towers with projections.
            "text_encoder": _clip_text(768, 12, 12, 3072, 768, "quick_gelu"),
            "text_encoder_2": _clip_text(1280, 32, 20, 5120, 1280, "gelu"),
            # google/t5-v1_1-xxl encoder
            "text_encoder_3": _t5_xxl_encoder("T5EncoderModel", "t5", 32128),
            "scheduler": {
                "_class_name": "FlowMatchEulerDiscreteScheduler",
                "num_train_timesteps": 1000,
                "shift": 3.0,
                "use_dynamic_shifting": False,
            },
        },
    },
}

#: Where each model trains natively: (width, height, frames).
NATIVE_RESOLUTION: dict[str, tuple[int, int, int]] = {
    "wan2.2-ti2v-5b": (1280, 704, 121),
    "wan2.1-t2v-1.3b": (832, 480, 81),
    "sd3.5-medium": (1024, 1024, 1),
}

#: model name -> lorabench model family
FAMILY: dict[str, str] = {"wan2.2-ti2v-5b": "wan", "wan2.1-t2v-1.3b": "wan", "sd3.5-medium": "sd3"}


def real_config(name: str) -> dict[str, Any]:
    """A deep copy of one model's configs (``model_index`` and ``components``)."""
    if name not in REAL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REAL_CONFIGS))}")
    return copy.deepcopy(REAL_CONFIGS[name])


def write_config_folder(name: str, out: str | Path, layers: Optional[int] = None) -> Path:
    """Write ``model_index.json`` and each component's config (no weights) under ``out``.

    ``layers`` replaces the transformer's ``num_layers`` (``dual_attention_layers`` is clipped
    to the new depth), for a few-block model at the real width.
    """
    data = real_config(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        tr = data["components"]["transformer"]
        tr["num_layers"] = layers
        if "dual_attention_layers" in tr:
            tr["dual_attention_layers"] = [i for i in tr["dual_attention_layers"] if i < layers]
    (out / "model_index.json").write_text(json.dumps(data["model_index"], indent=2) + "\n")
    for component, cfg in data["components"].items():
        folder = out / component
        folder.mkdir(exist_ok=True)
        fname = "scheduler_config.json" if component == "scheduler" else "config.json"
        (folder / fname).write_text(json.dumps(cfg, indent=2) + "\n")
    return out
