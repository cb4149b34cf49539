"""FID and KID from saved per-sample features, numerically matching torchmetrics, and the image
feature extractor that produces those features.

Reference implementations (torchmetrics 1.9):

* ``FrechetInceptionDistance``: features cast to float64, mean and N-1 covariance,
  ``|mu1-mu2|^2 + Tr(S1) + Tr(S2) - 2 sum(sqrt(eigvals(S1 S2)))``, then cast back to the
  module's output dtype (float32 for most extractors, so its value carries ~1e-7 relative
  rounding). We use the same statistics and our Fréchet core (:mod:`.frechet`): equal to ~2e-8.
* ``KernelInceptionDistance``: ``subsets`` times, draw ``subset_size`` rows from each set without
  replacement and compute the unbiased MMD^2 with the polynomial kernel
  ``k(x, y) = (gamma x.y + coef)^degree`` (gamma = 1/D by default); return the mean and the
  population std (``unbiased=False``) over subsets. torchmetrics draws subsets with the global
  torch RNG; ours come from a seeded numpy Generator, so equal numbers are expected only when
  every subset is the whole set (``subset_size`` = N on both sides).

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

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from .base import MetricResult, small_sample_warnings
from .bootstrap import DEFAULT_BOOTSTRAP, centred_interval
from .frechet import frechet_from_features

if TYPE_CHECKING:  # torch is imported lazily: FID/KID from saved features need only numpy
    import torch

FID_REFERENCE = "torchmetrics FrechetInceptionDistance (float64, cov N-1)"
KID_REFERENCE = "torchmetrics KernelInceptionDistance (unbiased MMD^2, polynomial kernel)"


# --------------------------------------------------------------------------------------------
# Feature sets


def _feature_pair(gen_feats: Any, real_feats: Any) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(gen_feats, dtype=np.float64)
    r = np.asarray(real_feats, dtype=np.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"expected gen_feats [N, D] and real_feats [M, D] with the same D, got gen_feats "
                         f"{np.shape(gen_feats)} and real_feats {np.shape(real_feats)}")
    for name, a in (("gen_feats", g), ("real_feats", r)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} of shape {a.shape} contains NaN or inf")
    return g, r


# --------------------------------------------------------------------------------------------
# FID


def fid(gen_feats: Any, real_feats: Any, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
        details: Optional[dict[str, Any]] = None) -> MetricResult:
    """Fréchet distance between Gaussians fitted to generated and reference features.

    ``ci95`` is a bootstrap over both sets, re-centred on the estimate (see ``bootstrap.centred_interval``);
    the raw percentile interval and the replicates' median are in ``details`` too. Each replicate
    refits both covariances: ~20 ms at 2048 x 400, ~3 s at 2048 x 2048 on one CPU core (pass
    ``n_boot=0`` to skip). ``details`` (e.g. the extractor's ``describe()``) is merged over ours.
    """
    g, r = _feature_pair(gen_feats, real_feats)
    n, n_ref, dim = len(g), len(r), g.shape[1]
    out_details: dict[str, Any] = {"reference": FID_REFERENCE, "feature_dim": dim, "covariance": "unbiased (N-1)"}
    warnings = small_sample_warnings("fid", n, dim, n_ref)
    if n < 2 or n_ref < 2:
        out_details.update(details or {})
        return MetricResult(name="fid", value=None, n=n, n_ref=n_ref, details=out_details, warnings=warnings,
                            skipped=f"need at least 2 samples per set, got {n} generated and {n_ref} reference")
    value = frechet_from_features(g, r)
    ci, how = centred_interval(value, frechet_from_features, [g, r], n_boot=n_boot, seed=seed)
    out_details.update(how)
    out_details.update(details or {})
    return MetricResult(name="fid", value=value, n=n, ci95=ci, n_ref=n_ref, details=out_details,
                        warnings=warnings)


# --------------------------------------------------------------------------------------------
# KID


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef: float) -> np.ndarray:
    return (x @ y.T * gamma + coef) ** degree


def _unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 for two sets of equal size m: self-pairs (the diagonals) are excluded."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


# torchmetrics recomputes the three kernel matrices of every subset: at subset_size=1000,
# subsets=100, D=2048 that is 1.2 TFLOP. When it is cheaper and fits in this many float64 entries
# (128 MB), we compute the full kernel matrices once and read each subset from them by indexing.
# Same values up to rounding.
_MAX_CACHED_KERNEL_ENTRIES = 16 * 1024 * 1024


def _kid_subset_values(g: np.ndarray, r: np.ndarray, subset_size: int, subsets: int, degree: int,
                       gamma: float, coef: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, n_ref = len(g), len(r)
    full_entries = n * n + n_ref * n_ref + n * n_ref
    cached = full_entries <= min(_MAX_CACHED_KERNEL_ENTRIES, 3 * subsets * subset_size ** 2)
    if cached:
        k_gg, k_rr, k_gr = (_poly_kernel(a, b, degree, gamma, coef) for a, b in ((g, g), (r, r), (g, r)))
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        # Same order as torchmetrics: a permutation of the reference set, then of the generated set.
        ir = rng.permutation(n_ref)[:subset_size]
        ig = rng.permutation(n)[:subset_size]
        if cached:
            values[i] = _unbiased_mmd2(k_rr[np.ix_(ir, ir)], k_gg[np.ix_(ig, ig)], k_gr[np.ix_(ig, ir)])
        else:
            fr, fg = r[ir], g[ig]
            values[i] = _unbiased_mmd2(_poly_kernel(fr, fr, degree, gamma, coef),
                                       _poly_kernel(fg, fg, degree, gamma, coef),
                                       _poly_kernel(fg, fr, degree, gamma, coef))
    return values


def kid(gen_feats: Any, real_feats: Any, *, subset_size: int = 1000, subsets: int = 100, degree: int = 3,
        gamma: Optional[float] = None, coef: float = 1.0, seed: int = 0,
        details: Optional[dict[str, Any]] = None) -> MetricResult:
    """Kernel Inception Distance: mean over ``subsets`` of the unbiased polynomial-kernel MMD^2.

    ``subset_size`` is reduced to min(n_gen, n_ref) when larger (torchmetrics raises instead), with
    a warning. ``details["std"]`` is the population std over subsets (torchmetrics' second output).
    ``ci95`` is the 2.5-97.5 percentile range of the per-subset values: how far one estimate from
    ``subset_size`` samples per side moves between draws. It is wider than the uncertainty of the
    mean over (overlapping) subsets, i.e. conservative; it is None when every subset is the whole
    of both sets (nothing varies).
    """
    g, r = _feature_pair(gen_feats, real_feats)
    n, n_ref, dim = len(g), len(r), g.shape[1]
    for name, v in (("subset_size", subset_size), ("subsets", subsets), ("degree", degree)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be None or > 0, got {gamma!r}")
    if not coef > 0:
        raise ValueError(f"coef must be > 0, got {coef!r}")
    gamma_used = 1.0 / dim if gamma is None else float(gamma)

    warnings: list[str] = []
    size = min(int(subset_size), n, n_ref)
    if size < subset_size:
        warnings.append(f"kid: subset_size {subset_size} reduced to {size} = min(n_gen={n}, n_ref={n_ref}); "
                        f"values at different subset sizes are not comparable")
    out_details: dict[str, Any] = {
        "reference": KID_REFERENCE, "feature_dim": dim, "subset_size": size, "subset_size_requested": subset_size,
        "subsets": subsets, "degree": degree, "gamma": gamma_used, "coef": coef, "seed": seed,
        "ci95_method": "2.5-97.5 percentiles of the per-subset values"}
    out_details.update(details or {})
    if size < 2:
        return MetricResult(name="kid", value=None, n=n, n_ref=n_ref, details=out_details, warnings=warnings,
                            skipped=f"need at least 2 samples per set, got {n} generated and {n_ref} reference")

    values = _kid_subset_values(g, r, size, subsets, degree, gamma_used, coef, seed)
    out_details["std"] = float(values.std())  # ddof=0, as torchmetrics' std(unbiased=False)
    whole_sets = size == n == n_ref
    ci = None
    if whole_sets:
        warnings.append("kid: every subset is the whole of both sets, so there is no subset spread: no ci95")
    elif subsets < 2:
        warnings.append("kid: a single subset has no spread: no ci95")
    else:
        lo, hi = np.quantile(values, [0.025, 0.975])
        ci = (float(lo), float(hi))
    mean = float(values.mean())
    return MetricResult(name="kid", value=mean if math.isfinite(mean) else None, n=n, ci95=ci, n_ref=n_ref,
                        details=out_details, warnings=warnings)


# --------------------------------------------------------------------------------------------
# Image feature extractor


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
            self._sha256 = _sha256(self.path)
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
