"""CLIP score and temporal consistency on a tiny RANDOM CLIP (meaningless values), checked against
torchmetrics' CLIPScore and direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.metrics.base import frame_indices
from eval.metrics.clip import clip_cosine, clip_score, temporal_consistency, temporal_consistency_result
from eval.metrics.clip_model import ClipModel
from eval.metrics.tiny import make_tiny_clip

PROMPTS = ["a cat", "a dog on the beach", "red car at night", "a photo of a horse in the snow",
           "blue sky with clouds", "Zebra, 42 ünïcode!"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def clip(tiny_clip) -> ClipModel:
    return ClipModel(tiny_clip, batch_size=4)  # smaller than the inputs: exercises batching


def _images(n: int, seed: int = 0, shape=(40, 48, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _torchmetrics_clip_score(tiny_clip, clip: ClipModel, images, prompts) -> float:
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel

    class TensorCLIP(CLIPModel):
        """transformers 5 returns model outputs; torchmetrics 1.9 expects the projected tensor."""

        def get_image_features(self, *a, **k):
            out = super().get_image_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_text_features(self, *a, **k):
            out = super().get_text_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    model = TensorCLIP.from_pretrained(tiny_clip, local_files_only=True).eval()
    # The same processor object on both sides, so images are preprocessed identically.
    metric = CLIPScore(model_name_or_path=lambda: (model, clip.processor))
    metric.update([torch.from_numpy(im).permute(2, 0, 1) for im in images], list(prompts))
    return float(metric.compute())


def test_image_clip_score_matches_torchmetrics(tiny_clip, clip):
    print("\nNOTE: CLIP tests use a tiny RANDOM CLIP; the scores are meaningless")
    images = _images(len(PROMPTS))
    cos = [clip_cosine(i, t) for i, t in zip(clip.embed_images(images), clip.embed_texts(PROMPTS))]
    ours = clip_score(cos, details=clip.describe(), n_boot=50)
    ref = _torchmetrics_clip_score(tiny_clip, clip, images, PROMPTS)
    assert ref > 0  # else the clamp at 0 would hide a mismatch
    assert ours.value == pytest.approx(ref, rel=1e-6)
    assert ours.n == len(PROMPTS) and ours.ci95 is not None and ours.ci95[0] <= ours.value <= ours.ci95[1]
    assert ours.details["reference"] == "torchmetrics CLIPScore"
    assert ours.details["model"] == "tiny-clip" and ours.details["frames_per_video"] == 8
    assert ours.details["random_weights"] and any("meaningless" in w for w in ours.warnings)


def test_clip_score_is_clamped_at_zero():
    assert clip_score([-0.2, -0.1], n_boot=0).value == 0.0
    assert clip_score([0.25, 0.35], n_boot=0).value == pytest.approx(30.0)


def _direct_video_cosine(clip: ClipModel, video: np.ndarray, prompt: str) -> float:
    """Straight from the HF model: each sampled frame's cosine with the prompt, then the mean."""
    idx = np.linspace(0, len(video) - 1, 8).round().astype(int)
    with torch.no_grad():
        pixels = clip.image_processor(images=list(video[idx]), return_tensors="pt")["pixel_values"]
        img = clip.model.get_image_features(pixel_values=pixels).pooler_output
        tok = clip.tokenizer([prompt], return_tensors="pt")
        txt = clip.model.get_text_features(**tok).pooler_output
    img = torch.nn.functional.normalize(img.double(), dim=-1)
    txt = torch.nn.functional.normalize(txt.double(), dim=-1)
    return float((img @ txt[0]).mean())


def test_video_clip_score_averages_frames_then_videos(clip):
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, (12, 36, 36, 3), dtype=np.uint8) for _ in range(3)]
    prompts = PROMPTS[:3]
    feats = [clip.sample_features(v, p) for v, p in zip(videos, prompts)]
    for f in feats:
        assert f["image_emb"].shape == (8, 16) and f["frame_emb"].shape == (12, 16) and f["text_emb"].shape == (16,)
        np.testing.assert_array_equal(f["image_emb"], f["frame_emb"][f["frame_indices"]])
    cos = [clip_cosine(f["image_emb"], f["text_emb"]) for f in feats]
    direct = [_direct_video_cosine(clip, v, p) for v, p in zip(videos, prompts)]
    np.testing.assert_allclose(cos, direct, rtol=1e-6, atol=1e-7)
    assert clip_score(cos, n_boot=0).value == pytest.approx(100 * max(np.mean(direct), 0), rel=1e-6, abs=1e-6)

    image = clip.sample_features(videos[0][0], prompts[0])  # an image: one row, no frame_emb
    assert image["image_emb"].shape == (1, 16) and "frame_emb" not in image
    assert clip.extract([videos[0][0], videos[0]]).shape == (2, 16)


def test_frame_indices_rule():
    assert list(frame_indices(16, 8)) == [0, 2, 4, 6, 9, 11, 13, 15]  # linspace(0, 15, 8).round()
    assert list(frame_indices(81, 8)) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert list(frame_indices(5, 8)) == [0, 1, 2, 3, 4]  # F <= k: every frame once
    assert list(frame_indices(1, 8)) == [0]
    with pytest.raises(ValueError):
        frame_indices(0, 8)


def test_over_long_prompt_raises_or_is_counted(tiny_clip, clip):
    long_prompt = " ".join(["xylophone"] * 40)
    assert clip.token_counts([long_prompt])[0] > 77
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens, over the CLIP text limit of 77"):
        clip.embed_texts(["a cat", long_prompt])

    lenient = ClipModel(tiny_clip, truncate=True)
    emb = lenient.embed_texts(["a cat", long_prompt])
    assert emb.shape == (2, 16) and lenient.describe()["truncated_prompts"] == 1
    # Truncation keeps the end-of-text token CLIP pools (torchmetrics' slicing would drop it).
    tok = lenient.tokenizer([long_prompt], truncation=True, max_length=77)["input_ids"][0]
    assert len(tok) == 77 and tok[-1] == lenient.tokenizer.eos_token_id
    result = clip_score([0.3, 0.2], details=lenient.describe(), n_boot=0)
    assert any("1 prompt(s) truncated" in w for w in result.warnings)


def test_ordinary_prompts_fit_the_tiny_tokenizer(clip):
    prompt = "a cinematic photo of a small red fox running through a snowy forest at sunset, high quality"
    assert clip.token_counts([prompt])[0] <= 77
    ids = clip.tokenizer([prompt])["input_ids"][0]
    assert clip.tokenizer.unk_token_id not in ids[1:-1]  # byte-level: nothing is unknown


def test_temporal_consistency():
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (5, 1))
    assert temporal_consistency(same) == pytest.approx(1.0)
    alternating = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    assert temporal_consistency(alternating) == pytest.approx(0.0)
    ramp = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # 45 degrees per step
    assert temporal_consistency(ramp) == pytest.approx(np.cos(np.pi / 4))
    with pytest.raises(ValueError, match=">= 2 frame"):
        temporal_consistency(same[:1])
    r = temporal_consistency_result([1.0, 0.5, 0.0], n_boot=20)
    assert r.name == "temporal_consistency" and r.value == pytest.approx(0.5) and r.n == 3 and r.ci95


def test_missing_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json.*metrics.clip.path"):
        ClipModel(tmp_path / "nothing-here")
