"""Stable Diffusion 3 / 3.5 (MMDiT) through diffusers' StableDiffusion3Pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from .base import Conditions, LatentGeometry, ModelSpec, SamplingDefaults
from .tiny_text import clip_tokenizer, t5_tokenizer


class SD3Spec(ModelSpec):
    name = "sd3"
    modality = "image"
    # Joint-attention projections of both streams (image: to_*, text: add_*_proj/to_add_out),
    # the targets used by diffusers' SD3 LoRA DreamBooth script.
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0",
                            "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    # SD3.5 was trained with 256 T5 tokens; the pipeline default is the same.
    default_max_text_length = 256

    @property
    def pipeline_cls(self) -> type:  # type: ignore[override]
        from diffusers import StableDiffusion3Pipeline
        return StableDiffusion3Pipeline

    def geometry(self, path: str | Path) -> LatentGeometry:
        self.validate_folder(path)
        vae = self.read_component_config(path, "vae")
        tr = self.read_component_config(path, "transformer")
        spatial = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
        p = int(tr.get("patch_size", 2))
        return LatentGeometry(spatial=spatial, temporal=1, patch=(p, p))

    def encode_text(self, pipe: Any, captions: list[str], device: torch.device,
                    max_length: int) -> Conditions:
        embeds, _, pooled, _ = pipe.encode_prompt(
            captions, captions, captions, device=device, do_classifier_free_guidance=False,
            max_sequence_length=max_length)
        return Conditions({"encoder_hidden_states": embeds, "pooled_projections": pooled})

    def encode_posterior(self, pipe: Any, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        vae = pipe.vae
        if pixels.ndim != 4:
            raise ValueError(f"SD3 expects image pixels (B,C,H,W), got shape {tuple(pixels.shape)}")
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return {"mean": dist.mean, "std": dist.std}

    def cache_shapes(self, path: str | Path, width: int, height: int, frames: int,
                     max_text: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        vae = self.read_component_config(path, "vae")
        tr = self.read_component_config(path, "transformer")
        spatial = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        latent = (int(vae.get("latent_channels", 16)), height // spatial, width // spatial)
        # CLIP-L and CLIP-G hidden states (77 tokens each, joined and padded to T5's width), then T5's.
        pooled = sum(int(self.read_component_config(path, c)["projection_dim"]) for c in ("text_encoder", "text_encoder_2"))
        return {"posterior.mean": ("vae", latent), "posterior.std": ("vae", latent),
                "cond.encoder_hidden_states": ("text", (77 + max_text, int(tr["joint_attention_dim"]))),
                "cond.pooled_projections": ("text", (pooled,))}

    def latents_from_posterior(self, vae_config: dict[str, Any], posterior: dict[str, torch.Tensor],
                               generator: Optional[torch.Generator]) -> torch.Tensor:
        # A draw from the posterior as diffusers' DiagonalGaussianDistribution.sample makes it
        # (noise in the VAE's dtype on its device, then mean + std * noise), so cached and
        # on-the-fly training draw the same latents from the same generator state.
        mean, std = posterior["mean"], posterior["std"]
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + std * noise
        # Inverse of the pipeline's decode: latents / scaling_factor + shift_factor.
        return ((z - vae_config["shift_factor"]) * vae_config["scaling_factor"]).float()

    def predict(self, pipe: Any, model: torch.nn.Module, noisy: torch.Tensor,
                timesteps: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return model(hidden_states=noisy, timestep=timesteps, return_dict=False, **cond.kwargs)[0]

    def text_limits(self, max_length: int) -> dict[str, int]:
        # Both CLIP encoders stop at 77 tokens (their position table); T5 at max_sequence_length.
        return {"tokenizer": 77, "tokenizer_2": 77, "tokenizer_3": max_length}

    def sampling_defaults(self, path: str | Path) -> SamplingDefaults:
        # stabilityai/stable-diffusion-3.5-medium model card: 40 steps, guidance 4.5, 1024x1024,
        # no negative prompt; the scheduler's own shift (3.0).
        return SamplingDefaults(1024, 1024, 1, 1, 40, 4.5, None, "",
                                "SD3.5-medium model card (40 steps, guidance 4.5)")

    def sample_kwargs(self, width: int, height: int, frames: int) -> dict[str, Any]:
        return {"width": width, "height": height, "output_type": "np"}

    def make_tiny(self, out: str | Path, seed: int = 0, **_: Any) -> Path:
        """Tiny random SD3.5-style folder: MMDiT with qk-norm, CLIP-L/G-shaped and T5 encoders."""
        from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                               StableDiffusion3Pipeline)
        from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, T5Config,
                                  T5EncoderModel)

        out = Path(out)
        torch.manual_seed(seed)

        def clip() -> CLIPTextModelWithProjection:
            return CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, projection_dim=16, max_position_embeddings=77,
                bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu"))

        # Real SD3: CLIP-L (768) + CLIP-G (1280) concatenated and zero-padded to T5's 4096,
        # pooled = 768 + 1280. Tiny: 16 + 16 padded to 32; pooled 32.
        t5 = T5EncoderModel(T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                     num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            block_out_channels=[8, 8, 8],
                            down_block_types=["DownEncoderBlock2D"] * 3,
                            up_block_types=["UpDecoderBlock2D"] * 3,
                            layers_per_block=1, norm_num_groups=4,
                            scaling_factor=1.5305, shift_factor=0.0609)
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
            caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=32,
            dual_attention_layers=(0,), qk_norm="rms_norm")
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae,
            text_encoder=clip(), tokenizer=clip_tokenizer(),
            text_encoder_2=clip(), tokenizer_2=clip_tokenizer(),
            text_encoder_3=t5, tokenizer_3=t5_tokenizer())
        pipe.save_pretrained(str(out), safe_serialization=True)
        return out
