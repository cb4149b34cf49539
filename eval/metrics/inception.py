"""The image feature extractor behind FID/KID: a TorchScript Inception file or any ``torch.nn.Module``.

What torchmetrics feeds a custom ``feature`` module (checked in its 1.9 source, FID and KID alike):
the ``imgs`` tensor passed to ``update`` *unchanged*: no resize, no dtype conversion, no
normalisation (``normalize=True`` only rescales [0, 1] floats to uint8 for the built-in Inception;
with a custom module it is ignored and the [0, 1] floats are passed through). ``num_features`` is
read from the module, or inferred from one dummy forward (uint8 or, with ``normalize=True``,
float, of ``input_img_size``). FID casts the output to float64; KID
keeps the module's dtype (float32 kernels). Resizing to 299 with ``antialias`` (bilinear
``F.interpolate(..., antialias=True)``, or TF1.x-compatible bilinear when ``antialias=False``) and
``(x - 128) / 128`` happen only inside torchmetrics' built-in Inception wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from training.fsio import sha256_file

if TYPE_CHECKING:  # torch is imported when an extractor is built
    import torch


def _resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)``: the source
    coordinate of output pixel i is i * in/out (no half-pixel offset), neighbours clamped at the
    border. This is the resize of the original TF FID code, which torch-fidelity reproduces and
    torchmetrics uses when ``antialias=False``; written here from that definition."""
    import torch

    def taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    (ylo, yhi, wy), (xlo, xhi, wx) = taps(x.shape[-2], size[0]), taps(x.shape[-1], size[1])
    left, right = x[..., xlo], x[..., xhi]
    rows = left + (right - left) * wx.to(x.device)                    # along width first, as TF
    top, bottom = rows[..., ylo, :], rows[..., yhi, :]
    return top + (bottom - top) * wy.to(x.device)[:, None]


class InceptionExtractor:
    """Per-image features for FID/KID from a TorchScript file or any ``torch.nn.Module``.

    ``model``: a path to a TorchScript file (e.g. the StyleGAN/clean-fid ``inception-2015-12-05.pt``
    detector, called as ``model(x, return_features=True)`` -> [B, 2048]; it takes 0-255 images and
    normalises them itself), or a module (a custom extractor, as torchmetrics accepts; called as
    ``module(x, **call_kwargs)``).

    What the model receives, for a batch of uint8 (H, W, 3) images: the NCHW **uint8** tensor,
    unchanged, when the images already have ``size`` (or ``size`` is None) -- exactly what
    torchmetrics' FID/KID feed a custom ``feature`` module; otherwise the images as float32 on the
    0-255 scale, resized to ``size`` by bilinear interpolation: ``F.interpolate(antialias=True)``
    (torchmetrics' default ``antialias=True``) or TF1.x-compatible bilinear when
    ``antialias=False`` (torchmetrics' ``antialias=False``). This is the resize torchmetrics'
    built-in Inception does before its own ``(x - 128) / 128``; the TorchScript detector does
    that normalisation itself. A custom module must therefore accept uint8 and float input
    (``x.float()`` first does it). The module is put in eval mode; features come back as float64.
    """

    name = "inception"

    def __init__(self, model: Union[str, Path, torch.nn.Module], *,
                 size: Optional[tuple[int, int]] = (299, 299), antialias: bool = True,
                 call_kwargs: Optional[dict[str, Any]] = None, dim: Optional[int] = None,
                 batch_size: int = 32, device: str = "cpu") -> None:
        import torch

        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be None or (height, width), got {size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.antialias = bool(antialias)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self._sha256: Optional[str] = None
        if isinstance(model, (str, Path)):
            self.path: Optional[Path] = Path(model)
            if not self.path.is_file():
                raise ValueError(f"feature extractor file not found: {self.path}")
            self.module = torch.jit.load(str(self.path), map_location=self.device)
            self.call_kwargs = {"return_features": True} if call_kwargs is None else dict(call_kwargs)
        elif isinstance(model, torch.nn.Module):
            self.path = None
            self.module = model.to(self.device)
            self.call_kwargs = dict(call_kwargs or {})
        else:
            raise TypeError(f"model must be a TorchScript file path or a torch.nn.Module, got {type(model).__name__}")
        self.module.eval()
        self._dim = dim if dim is not None else self._declared_dim()

    def _declared_dim(self) -> Optional[int]:
        nf = getattr(self.module, "num_features", None)
        if nf is None:
            return None
        return int(nf.item()) if hasattr(nf, "item") else int(nf)

    @property
    def dim(self) -> int:
        """Feature dimension: given, the module's ``num_features``, or one dummy forward (as torchmetrics)."""
        if self._dim is None:
            h, w = self.size or (299, 299)
            self._dim = int(self.extract([np.zeros((h, w, 3), dtype=np.uint8)]).shape[1])
        return self._dim

    def _to_input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        import torch

        shapes = {im.shape[:2] for im in images}
        if self.size is None and len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} need a resize size; got size=None")
        if len(shapes) > 1:  # resize one by one, then batch
            return torch.cat([self._to_input([im]) for im in images])
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        if self.size is None or x.shape[-2:] == self.size:
            return x  # uint8, unchanged: what torchmetrics passes to a custom module
        x = x.to(torch.float32)
        if self.antialias:
            return torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                                                   antialias=True)
        return _resize_bilinear_tf1(x, self.size)

    def extract(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Features [B, D] float64 for B uint8 RGB images (H, W, 3); video frames are passed as images."""
        import torch

        images = [np.asarray(im) for im in batch]
        for i, im in enumerate(images):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"image {i}: expected uint8 (H, W, 3), got {im.dtype} {im.shape}")
        if not images:
            return np.zeros((0, self._dim or 0), dtype=np.float64)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                feats = self.module(self._to_input(chunk), **self.call_kwargs)
                if isinstance(feats, (tuple, list)):
                    feats = feats[0]
                out.append(feats.reshape(len(chunk), -1).to(torch.float64).cpu().numpy())
        features = np.concatenate(out)
        if self._dim is not None and features.shape[1] != self._dim:
            raise ValueError(f"extractor returned features of shape {features.shape}, expected dim {self._dim}")
        return features

    def describe(self) -> dict[str, Any]:
        """What produced the features: model file and its sha256, input size, resize, antialias."""
        if self.path is not None and self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        if self.size is None:
            resize = "none (images passed at their own size, as torchmetrics does for a custom module)"
        elif self.antialias:
            resize = "bilinear, antialias (torch.nn.functional.interpolate, align_corners=False)"
        else:
            resize = "bilinear, TensorFlow 1.x compatible (torchmetrics antialias=False)"
        return {
            "extractor": self.name,
            "model": str(self.path) if self.path is not None else type(self.module).__name__,
            "sha256": self._sha256,
            "input_size": list(self.size) if self.size is not None else None,
            "resize": resize,
            "antialias": self.antialias,
            "input": "uint8 NCHW when no resize is needed, else float32 on the 0-255 scale",
            "random_weights": bool(getattr(self.module, "lorabench_random_weights", False)),
            "call_kwargs": dict(self.call_kwargs),
            "feature_dim": self.dim,
        }
