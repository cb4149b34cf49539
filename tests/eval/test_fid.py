"""FID/KID from features against torchmetrics, fed through the same custom extractor module."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from eval.metrics.fid import fid, kid
from eval.metrics.frechet import gaussian_stats
from eval.metrics.inception import InceptionExtractor, _resize_bilinear_tf1

DIM = 16


class TinyExtractor(torch.nn.Module):
    """Deterministic conv + pool features. Accepts uint8 (what torchmetrics passes) or 0-255 floats."""

    def __init__(self, dim: int = DIM, out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, dim, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(dim, generator=g) * 0.1)
        self.num_features = dim  # torchmetrics reads this instead of running a dummy image
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(x.float() / 255.0, 2)
        return torch.tanh(self.conv(x)).mean(dim=(2, 3)).to(self.out_dtype)


def _images(seed: int, n: int, size: int = 24, lo: int = 0, hi: int = 255) -> np.ndarray:
    """Images whose brightness, colour and texture vary per image, so features spread widely."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(lo, hi, size=(n, 1, 1, 3))
    amp = rng.uniform(10, 80, size=(n, 1, 1, 1))
    noise = rng.normal(size=(n, size, size, 3))
    return np.clip(base + amp * noise, 0, 255).astype(np.uint8)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def image_sets():
    return _images(0, 48, hi=200), _images(1, 40, lo=60)


def test_fid_matches_torchmetrics_custom_extractor(image_sets):
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen, real = image_sets
    module = TinyExtractor()
    tm = FrechetInceptionDistance(feature=module)
    tm.update(_nchw(real), real=True)
    tm.update(_nchw(gen), real=False)
    expected = float(tm.compute())

    ext = InceptionExtractor(module, size=None, batch_size=64)
    g, r = ext.extract(list(gen)), ext.extract(list(real))
    assert g.shape == (48, DIM) and g.dtype == np.float64
    res = fid(g, r, n_boot=50, details=ext.describe())
    assert res.value == pytest.approx(expected, rel=1e-6)
    assert res.name == "fid" and res.n == 48 and res.n_ref == 40
    assert res.details["feature_dim"] == DIM and res.details["reference"].startswith("torchmetrics")
    assert res.details["extractor"] == "inception" and res.details["antialias"] is True
    assert res.warnings == []
    lo, hi = res.ci95
    assert lo < res.value < hi


def test_fid_interval_covers_value_despite_bootstrap_bias():
    """Resampling with replacement inflates FID's small-sample bias: the raw percentile interval
    lies entirely above the value; the re-centred one covers it and keeps the replicate spread."""
    from eval.metrics.bootstrap import bootstrap_ci
    from eval.metrics.frechet import frechet_from_features

    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(300, 40)), rng.normal(size=(300, 40)) * 1.1
    res = fid(a, b, n_boot=60, seed=3)
    raw = bootstrap_ci(frechet_from_features, [a, b], n_boot=60, seed=3)
    assert res.details["ci95_percentile_raw"] == pytest.approx(list(raw), rel=1e-12)  # same replicates
    assert raw[0] > res.value  # the bias this interval corrects
    lo, hi = res.ci95
    assert lo < res.value < hi
    assert hi - lo == pytest.approx(raw[1] - raw[0], rel=1e-9)


def test_default_size_images_pass_unchanged_as_uint8():
    """At the target size nothing is resized and the module gets torchmetrics' exact input."""
    seen = []

    class Recorder(TinyExtractor):
        def forward(self, x):
            seen.append(x.dtype)
            return super().forward(x)

    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _images(2, 12, size=299), _images(3, 12, size=299, lo=100)
    module = Recorder()
    ext = InceptionExtractor(module, batch_size=12)  # default size (299, 299)
    ours = fid(ext.extract(list(a)), ext.extract(list(b)), n_boot=0).value
    assert seen == [torch.uint8, torch.uint8]
    tm = FrechetInceptionDistance(feature=module)
    tm.update(_nchw(b), real=True)
    tm.update(_nchw(a), real=False)
    assert ours == pytest.approx(float(tm.compute()), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_when_subsets_are_whole_sets():
    """Comparable when (1) subset_size = N on both sides: every subset is the whole set whatever the
    permutation, and (2) the module returns float64: torchmetrics' KID keeps the module's dtype."""
    from torchmetrics.image.kid import KernelInceptionDistance

    gen, real = _images(4, 30, hi=200), _images(5, 30, lo=60)
    module = TinyExtractor(out_dtype=torch.float64)
    tm = KernelInceptionDistance(feature=module, subset_size=30, subsets=3)
    tm.update(_nchw(real), real=True)
    tm.update(_nchw(gen), real=False)
    tm_mean, tm_std = (float(v) for v in tm.compute())

    ext = InceptionExtractor(module, size=None)
    res = kid(ext.extract(list(gen)), ext.extract(list(real)), subset_size=30, subsets=3)
    assert res.value == pytest.approx(tm_mean, rel=1e-9)
    assert res.details["std"] == pytest.approx(tm_std, abs=1e-12)
    assert res.ci95 is None and any("no subset spread" in w for w in res.warnings)


def test_kid_subsets_deterministic_clamped_and_interval():
    rng = np.random.default_rng(6)
    g, r = rng.normal(size=(80, 8)), rng.normal(size=(60, 8)) + 0.5
    res = kid(g, r, subset_size=100, subsets=20, seed=1)
    assert res.details["subset_size"] == 60 and any("reduced to 60" in w for w in res.warnings)
    assert res.value == kid(g, r, subset_size=100, subsets=20, seed=1).value  # same seed, same subsets
    lo, hi = res.ci95
    assert lo <= res.value <= hi and res.details["std"] > 0
    # Same-distribution sets are far closer than shifted ones.
    same = kid(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), subset_size=30, subsets=20)
    assert abs(same.value) < 0.2 * res.value


def test_kid_uncached_path_equals_cached(monkeypatch):
    import eval.metrics.fid as fid_mod

    rng = np.random.default_rng(7)
    g, r = rng.normal(size=(50, 6)), rng.normal(size=(45, 6)) * 1.3
    cached = kid(g, r, subset_size=20, subsets=10).value
    monkeypatch.setattr(fid_mod, "_MAX_CACHED_KERNEL_ENTRIES", 0)
    assert kid(g, r, subset_size=20, subsets=10).value == pytest.approx(cached, rel=1e-12)


def test_fid_identical_sets_zero_and_small_sample_warnings():
    f = np.random.default_rng(8).normal(size=(100, DIM)) * 5
    res = fid(f, f.copy(), n_boot=0)
    assert abs(res.value) < 1e-8 * np.trace(gaussian_stats(f)[1]) and res.ci95 is None
    small = fid(f[:10], f[10:22] + 1.0, n_boot=20)
    assert small.value > 0 and len(small.warnings) == 2
    assert all("feature dimension 16" in w for w in small.warnings)
    assert fid(f[:1], f, n_boot=0).value is None


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)"):
        fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="subset_size"):
        kid(np.zeros((5, 3)), np.zeros((5, 3)), subset_size=0)
    ext = InceptionExtractor(TinyExtractor(), size=None)
    with pytest.raises(ValueError, match=r"image 0: expected uint8 \(H, W, 3\), got float64 \(4, 4, 3\)"):
        ext.extract([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="different sizes"):
        ext.extract([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 9, 3), np.uint8)])


def test_resize_modes():
    x = torch.from_numpy(np.random.default_rng(9).uniform(0, 255, size=(2, 3, 8, 10)).astype(np.float32))
    # TF1 bilinear without half-pixel centres: an exact 2x downscale picks every other pixel.
    assert torch.equal(_resize_bilinear_tf1(x, (4, 5)), x[..., ::2, ::2])
    assert torch.equal(_resize_bilinear_tf1(x, (8, 10)), x)
    const = torch.full((1, 3, 7, 5), 42.0)
    assert torch.allclose(_resize_bilinear_tf1(const, (11, 13)), torch.full((1, 3, 11, 13), 42.0))

    seen = []

    class Recorder(TinyExtractor):
        def forward(self, x):
            seen.append(x)
            return super().forward(x)

    imgs = list(_images(10, 3, size=20))
    for antialias in (True, False):
        seen.clear()
        ext = InceptionExtractor(Recorder(), size=(31, 29), antialias=antialias)
        ext.extract(imgs)
        src = _nchw(np.stack(imgs)).float()
        want = (torch.nn.functional.interpolate(src, size=(31, 29), mode="bilinear", align_corners=False,
                                                antialias=True) if antialias else _resize_bilinear_tf1(src, (31, 29)))
        assert seen[0].dtype == torch.float32 and torch.equal(seen[0], want)
        assert ext.describe()["antialias"] is antialias and ext.describe()["input_size"] == [31, 29]
    # Mixed sizes are resized one by one to the common size.
    assert ext.extract([imgs[0], np.zeros((16, 12, 3), np.uint8)]).shape == (2, DIM)


def test_torchscript_file(tmp_path):
    """A saved TorchScript detector is called with return_features=True; describe() hashes the file."""

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TinyExtractor()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            f = self.inner(x)
            return f if return_features else f.sum(dim=1, keepdim=True)

    path = tmp_path / "detector.pt"
    torch.jit.save(torch.jit.script(Detector()), str(path))
    ext = InceptionExtractor(path, size=(24, 24))
    feats = ext.extract(list(_images(11, 5)))
    assert feats.shape == (5, DIM) and ext.dim == DIM
    d = ext.describe()
    assert d["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and d["model"] == str(path)
    assert d["call_kwargs"] == {"return_features": True}
    np.testing.assert_allclose(feats, TinyExtractor()(_nchw(_images(11, 5))).detach().double().numpy(), rtol=1e-6)
