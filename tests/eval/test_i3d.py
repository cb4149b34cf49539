"""I3D / FVD with RANDOM I3D weights: the numbers are meaningless, only shapes, loading paths,
preprocessing and the FVD arithmetic are checked. Real FVD needs a user-supplied weights file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.metrics.fvd import fvd, fvd_unavailable
from eval.metrics.i3d import (InceptionI3d, TorchScriptI3D, load_i3d, random_i3d, save_random_i3d,
                              save_torchscript_i3d)
from eval.metrics.i3d_extractor import I3DExtractor, fvd_frame_indices, preprocess_video
from eval.metrics.tiny import make_random_i3d

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def clip_input() -> torch.Tensor:
    return torch.rand(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def reference(clip_input) -> tuple[InceptionI3d, torch.Tensor]:
    print("\nNOTE: I3D tests use RANDOM weights; their FVD values are meaningless")
    model = random_i3d(seed=0)
    with torch.no_grad():
        return model, model(clip_input)


@pytest.fixture(scope="module")
def random_weights_file(tmp_path_factory):
    return make_random_i3d(tmp_path_factory.mktemp("i3d") / "random_i3d.pt", seed=0)


def test_forward_shape_and_state_dict_round_trip(reference, clip_input, random_weights_file):
    _, expected = reference
    assert expected.shape == (1, 400) and torch.isfinite(expected).all()
    loaded = load_i3d(random_weights_file)
    assert isinstance(loaded, InceptionI3d) and loaded.file_format == "state_dict"
    assert loaded.random_weights  # the flag travels inside the file
    with torch.no_grad():
        assert torch.equal(loaded(clip_input), expected)


def test_torchscript_round_trip(reference, clip_input, tmp_path):
    model, expected = reference
    path = save_torchscript_i3d(model, tmp_path / "i3d_script.pt", random_weights=True)
    loaded = load_i3d(path)
    assert isinstance(loaded, TorchScriptI3D) and loaded.file_format == "torchscript"
    assert loaded.random_weights and not loaded.stylegan_v_signature
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip_input), expected, rtol=1e-5, atol=1e-5)


class _FakeStyleGANVDetector(torch.nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: same call signature; reports what it was given."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 400)
        out[:, 0] = float(rescale)
        out[:, 1] = float(resize)
        out[:, 2] = float(return_features)
        out[:, 3] = x.amin(dim=(1, 2, 3, 4))
        out[:, 4] = x.amax(dim=(1, 2, 3, 4))
        out[:, 5] = float(x.shape[1])
        out[:, 6] = float(x.shape[2])
        out[:, 7] = float(x.shape[3])
        out[:, 8] = float(x.shape[4])
        return out if return_features else out.softmax(dim=1)


def test_stylegan_v_torchscript_called_with_our_preprocessing(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_FakeStyleGANVDetector()), str(path))
    ext = I3DExtractor(path, frames=16)
    assert ext.model.stylegan_v_signature
    assert ext.describe()["call"] == "detector(x, rescale=False, resize=False, return_features=True)"
    video = np.zeros((20, 30, 40, 3), np.uint8)
    video[:, :, 20:] = 255
    feats = ext.extract([video])
    assert feats.shape == (1, 400) and feats.dtype == np.float64
    rescale, resize, return_features, lo, hi, c, t, h, w = feats[0, :9]
    assert (rescale, resize, return_features) == (0, 0, 1)
    assert (lo, hi) == pytest.approx((-1, 1), abs=1e-5)  # scaled to [-1, 1] (bilinear rounding only)
    assert (c, t, h, w) == (3, 16, 224, 224)


def test_state_dict_variants_and_key_errors(random_weights_file, tmp_path):
    state = torch.load(random_weights_file, weights_only=True)["state_dict"]
    # The converted i3d_pretrained_400.pt has no num_batches_tracked buffers; DDP adds "module.".
    bare = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(bare, tmp_path / "bare.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    for name in ("bare.pt", "ddp.pt"):
        model = load_i3d(tmp_path / name)
        assert not model.random_weights  # no marker in these files
        assert torch.equal(model.logits.conv3d.weight, state["logits.conv3d.weight"])

    wrong = dict(bare)
    wrong["Mixed_9z.b0.conv3d.weight"] = wrong.pop("Mixed_5c.b0.conv3d.weight")
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="Mixed_5c.b0.conv3d.weight") as err:
        load_i3d(tmp_path / "wrong.pt")
    assert "Mixed_9z.b0.conv3d.weight" in str(err.value) and "wrong.pt" in str(err.value)

    with pytest.raises(FileNotFoundError, match="nowhere.pt.*metrics.fvd.i3d_path"):
        load_i3d(tmp_path / "nowhere.pt")


def test_frame_sampling_rule():
    assert list(fvd_frame_indices(40, 16)) == list(range(16))  # the first 16, not spread out
    assert list(fvd_frame_indices(16, 16)) == list(range(16))
    with pytest.raises(ValueError, match="9 frames, FVD reads the first 16"):
        fvd_frame_indices(9, 16)
    with pytest.raises(ValueError, match="at least 9"):
        fvd_frame_indices(40, 8)


def test_preprocess_first_frames_resize_without_crop_and_scale():
    video = np.zeros((20, 24, 48, 3), np.uint8)
    video += np.arange(20, dtype=np.uint8)[:, None, None, None] * 10  # frame i has value 10 i
    video[:, :, :12] = 0  # left quarter black
    x = preprocess_video(video, frames=16)
    assert x.shape == (3, 16, 224, 224) and x.dtype == torch.float32
    right = x[:, :, :, 112:]
    expected = torch.tensor([10 * i * 2 / 255 - 1 for i in range(16)])
    torch.testing.assert_close(right.mean(dim=(0, 2, 3)), expected)  # frames 0..15 in order, in [-1, 1]
    # The full width is squeezed to 224 (aspect not kept, no center crop): the black quarter stays.
    assert torch.all(x[:, :, :, :50] == -1)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_video(video.astype(np.float32))


def test_extractor_matches_model_on_preprocessed_input(random_weights_file):
    ext = I3DExtractor(random_weights_file, frames=16, batch_size=2)
    d = ext.describe()
    assert d["random_weights"] and "meaningless" in d["note"] and len(d["sha256"]) == 64
    assert ext.name == "i3d" and ext.dim == 400
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (18, 32, 40, 3), dtype=np.uint8)
    feats = ext.extract([video])
    with torch.no_grad():
        direct = ext.model(preprocess_video(video)[None]).double().numpy()
    np.testing.assert_array_equal(feats, direct)
    with pytest.raises(ValueError, match="FVD sample 1: video has 10 frames"):
        ext.extract([video, video[:10]])


def test_fvd_of_identical_sets_is_zero_and_reports_sample_size():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 400)) * 3 + 1
    r = fvd(feats, feats.copy(), n_boot=10, details={"frames": 16, "random_weights": True})
    scale = np.trace(np.cov(feats, rowvar=False))
    assert abs(r.value) < 1e-9 * scale
    assert r.name == "fvd" and r.n == 60 and r.n_ref == 60 and r.ci95 is not None
    assert r.details["frames"] == 16 and "StyleGAN-V" in r.details["reference"]
    assert any("feature dimension 400" in w for w in r.warnings)  # 60 <= 400: rank-deficient
    assert any("meaningless" in w for w in r.warnings)
    shifted = fvd(feats + 1.0, feats, n_boot=0)
    assert shifted.value == pytest.approx(400.0, rel=1e-9)  # |mu1 - mu2|^2 with equal covariances
    with pytest.raises(ValueError, match=r"\[N, 400\]"):
        fvd(feats[:, :10], feats)


def test_fvd_skipped_without_weights():
    r = fvd_unavailable("metrics.fvd.i3d_path is not set")
    assert r.value is None and r.name == "fvd"
    assert "metrics.fvd.i3d_path" in r.skipped and "i3d_pretrained_400.pt" in r.skipped
    assert "skipped" in str(r)


def test_save_random_i3d_is_deterministic(tmp_path):
    a = torch.load(save_random_i3d(tmp_path / "a.pt", seed=3), weights_only=True)["state_dict"]
    b = torch.load(save_random_i3d(tmp_path / "b.pt", seed=3), weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
