"""lorabench: LoRA training for video (Wan) and image (SD3) diffusion models."""

__version__ = "0.1.0"
