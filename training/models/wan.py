"""Wan2.1 / Wan2.2 (T2V and TI2V-5B) through diffusers' WanPipeline.

Wan2.2-TI2V-5B differs from Wan2.1 in its VAE (48 latent channels, 16x spatial compression
through a 2x2 patchify inside the VAE) and in ``expand_timesteps``: the pipeline gives every
latent token its own timestep (so the first frame can be clean for image conditioning). For
text-to-video training every token gets the clip's timestep, which is what the pipeline does
at inference when no image is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from .base import Conditions, LatentGeometry, ModelFolderError, ModelSpec, SamplingDefaults
from .tiny_text import t5_tokenizer


#: ``sample_neg_prompt`` of Wan's reference (wan/configs/shared_config.py, Wan2.1 and Wan2.2):
#: the negative prompt every published Wan sample was made with. An empty one is off-card.
WAN_NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
                       "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
                       "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


class WanSpec(ModelSpec):
    name = "wan"
    modality = "video"
    # Self- and cross-attention projections in every block: the usual Wan LoRA targets
    # (diffusers' and musubi-tuner's defaults); the FFN can be added by config.
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    default_max_text_length = 512

    @property
    def pipeline_cls(self) -> type:  # type: ignore[override]
        from diffusers import WanPipeline
        return WanPipeline

    # ---------------------------------------------------------------- inspection

    def validate_folder(self, path: str | Path) -> None:
        index = self.read_model_index(path)
        if index.get("transformer_2") and index["transformer_2"][0] is not None:
            raise ModelFolderError(
                f"{path}: a two-expert Wan2.2 (A14B) folder (transformer + transformer_2). Training "
                "one LoRA per expert is not supported yet; use Wan2.1 or Wan2.2-TI2V-5B")

    def geometry(self, path: str | Path) -> LatentGeometry:
        self.validate_folder(path)
        vae = self.read_component_config(path, "vae")
        tr = self.read_component_config(path, "transformer")
        patch = tr.get("patch_size", [1, 2, 2])
        return LatentGeometry(spatial=int(vae.get("scale_factor_spatial", 8)),
                              temporal=int(vae.get("scale_factor_temporal", 4)),
                              patch=(int(patch[1]), int(patch[2])))

    # ---------------------------------------------------------------- encoding

    def encode_text(self, pipe: Any, captions: list[str], device: torch.device,
                    max_length: int) -> Conditions:
        # The pipeline's own encoder: same cleaning, padding and zeroed tail as at inference.
        embeds, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False,
                                       max_sequence_length=max_length, device=device)
        return Conditions({"encoder_hidden_states": embeds})

    def encode_posterior(self, pipe: Any, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        vae = pipe.vae
        if pixels.ndim != 5:
            raise ValueError(f"Wan expects video pixels (B,C,F,H,W), got shape {tuple(pixels.shape)}")
        return {"mean": vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()}

    def cache_shapes(self, path: str | Path, width: int, height: int, frames: int,
                     max_text: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        geo = self.geometry(path)
        z = int(self.read_component_config(path, "vae").get("z_dim", 16))
        text = int(self.read_component_config(path, "text_encoder")["d_model"])
        latent = (z, 1 + (frames - 1) // geo.temporal, height // geo.spatial, width // geo.spatial)
        return {"posterior.mean": ("vae", latent), "cond.encoder_hidden_states": ("text", (max_text, text))}

    def latents_from_posterior(self, vae_config: dict[str, Any], posterior: dict[str, torch.Tensor],
                               generator: Optional[torch.Generator]) -> torch.Tensor:
        # The posterior mean, as Wan's reference does (WanVAE.encode returns mu, no sampling);
        # ``generator`` is unused, so the noise stream does not depend on the VAE.
        z = posterior["mean"].float()
        mean = torch.tensor(vae_config["latents_mean"], device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae_config["latents_std"], device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        return (z - mean) / std  # inverse of the pipeline's `latents / (1/std) + mean`

    def predict(self, pipe: Any, model: torch.nn.Module, noisy: torch.Tensor,
                timesteps: torch.Tensor, cond: Conditions) -> torch.Tensor:
        if pipe.config.get("expand_timesteps", False):
            # One timestep per latent token, as WanPipeline does with expand_timesteps=True.
            p = pipe.transformer.config.patch_size
            b, _, f, h, w = noisy.shape
            seq = f * (h // p[1]) * (w // p[2])
            timesteps = timesteps.view(b, 1).expand(b, seq)
        return model(hidden_states=noisy, timestep=timesteps, return_dict=False, **cond.kwargs)[0]

    def sampling_defaults(self, path: str | Path) -> SamplingDefaults:
        vae = self.read_component_config(path, "vae")
        tr = self.read_component_config(path, "transformer")
        width = int(tr.get("num_attention_heads", 0)) * int(tr.get("attention_head_dim", 0))
        if int(vae.get("z_dim", 16)) == 48:
            # Wan2.2 wan/configs/wan_ti2v_5B.py: sample_fps 24, sample_shift 5.0, sample_steps 50,
            # sample_guide_scale 5.0, frame_num 121; size 1280*704 (README / diffusers model card).
            return SamplingDefaults(1280, 704, 121, 24, 50, 5.0, 5.0, WAN_NEGATIVE_PROMPT,
                                    "Wan2.2 ti2v_5B config (wan/configs/wan_ti2v_5B.py)")
        if width == 1536:
            # Wan2.1 README, T2V-1.3B: --size 832*480 --sample_shift 8 --sample_guide_scale 6;
            # 81 frames at 16 fps and 50 steps from wan/configs/shared_config.py / generate.py.
            return SamplingDefaults(832, 480, 81, 16, 50, 6.0, 8.0, WAN_NEGATIVE_PROMPT,
                                    "Wan2.1 README, T2V-1.3B (sample_shift 8, sample_guide_scale 6)")
        # Wan2.1 T2V-14B: generate.py defaults for t2v (shift 5.0, guidance 5.0), 1280*720.
        return SamplingDefaults(1280, 720, 81, 16, 50, 5.0, 5.0, WAN_NEGATIVE_PROMPT,
                                "Wan2.1 generate.py t2v defaults (sample_shift 5, sample_guide_scale 5)")

    def sample_kwargs(self, width: int, height: int, frames: int) -> dict[str, Any]:
        return {"width": width, "height": height, "num_frames": frames, "output_type": "np"}

    # ---------------------------------------------------------------- tiny model

    def make_tiny(self, out: str | Path, seed: int = 0, variant: str = "t2v", **_: Any) -> Path:
        """Tiny random Wan folder. ``variant``: 't2v' (Wan2.1 layout) or 'ti2v' (Wan2.2-TI2V-5B layout)."""
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        if variant not in ("t2v", "ti2v"):
            raise ValueError(f"unknown wan variant {variant!r}: use 't2v' or 'ti2v'")
        out = Path(out)
        torch.manual_seed(seed)
        text_dim = 32
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=128, d_model=text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0))
        tokenizer = t5_tokenizer()
        if variant == "t2v":
            vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, True, True],
                                   latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
            z_dim = 16
        else:
            # Wan2.2 VAE: residual blocks, 2x2 patchify inside, 48 latent channels, 16x spatial.
            vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1],
                                   num_res_blocks=1, temperal_downsample=[False, True, True],
                                   is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                                   scale_factor_spatial=16, scale_factor_temporal=4,
                                   latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
            z_dim = 48
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=z_dim,
            out_channels=z_dim, text_dim=text_dim, freq_dim=32, ffn_dim=64, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
        # Wan's released schedulers: UniPC in flow mode with a shift (3.0 for 480p T2V, 5.0 for TI2V).
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000,
                                            flow_shift=3.0 if variant == "t2v" else 5.0)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer, expand_timesteps=(variant == "ti2v"))
        pipe.save_pretrained(str(out), safe_serialization=True)
        return out
