"""Metrics stage end to end: features saved per sample, results.json/md, recompute from DIR, bad inputs.

The CLIP, I3D and Inception networks here are tiny RANDOM ones (eval.metrics.tiny): the tests
check the plumbing and that each number equals its reference formula on the saved features,
not the values themselves.
"""

import io
import json
import tarfile

import numpy as np
import pytest
import scipy.linalg

from .conftest import eval_cfg

# Every metric end to end against its reference (~20 s with the shared fixtures): the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def heldout_shards(tmp_path_factory):
    from training.data.synthetic import make_data
    out = tmp_path_factory.mktemp("heldout") / "video"
    make_data("video", out, shards=1, samples_per_shard=5, seed=99, size=(32, 32), frames=9)
    return out


def metric_overrides(models, shards):
    return [f"metrics.clip.path={models['clip']}", f"metrics.fvd.i3d_path={models['i3d']}", "metrics.fvd.frames=9",
            f"metrics.fid.extractor={models['inception']}", f"reference.shards={shards}", "metrics.enabled=true",
            "metrics.bootstrap=30", "metrics.fid.kid_subset_size=16", "metrics.fid.kid_subsets=5",
            "prompts.limit=1"]


@pytest.fixture(scope="module")
def evaluated(tiny_wan, tiny_wan_run, tiny_metric_models, heldout_shards, tmp_path_factory):
    from cluster.eval import run
    tmp = tmp_path_factory.mktemp("metrics-eval")
    cfg = eval_cfg(tiny_wan, tmp, *metric_overrides(tiny_metric_models, heldout_shards),
                   f"variants.adapters=[{{path: {tiny_wan_run}, checkpoints: latest}}]")
    return cfg, run(cfg, progress=False)


def scipy_frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))


def load_features(root, extractor, group):
    from safetensors import safe_open
    with safe_open(str(root / "features" / extractor / f"{group}.safetensors"), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["ids"])


def test_results_carry_metadata_metrics_and_deltas(evaluated):
    cfg, body = evaluated
    root = cfg.out_dir
    assert json.loads((root / "results.json").read_text()) == body
    assert body["schema"] == 1 and len(body["git"]["sha"] or "x" * 40) == 40 and len(body["config_hash"]) == 64
    assert body["libraries"]["torch"].startswith("2.") and body["hardware"]["workers"][0]["threads"] == 1
    assert list(body["variants"]) == ["base", "tiny-wan.step-0000004@1"]
    base, lora = body["variants"]["base"], body["variants"]["tiny-wan.step-0000004@1"]
    assert lora["sha256"] == lora["proof"]["sha256"] and lora["proof"]["effect_max_diff"] > 0 and base["proof"] is None
    for name in ("clip_score", "temporal_consistency", "fvd", "fid", "kid", "sharpness"):
        m = lora["metrics"][name]
        assert m["value"] is not None and m["n"] > 0, name
        assert m["ci95"] is not None and m["ci95"][0] <= m["ci95"][1], name
        d = lora["delta_vs_base"][name]   # every sample readable: the paired delta is the difference of values
        assert d["value"] == pytest.approx(m["value"] - base["metrics"][name]["value"], abs=1e-9), name
        assert d["n"] == lora["n_samples"] and d["n_prompts"] == len({s["prompt_id"] for s in body["samples"]}), name
        if name == "kid":
            assert d["ci95"] is None and "no paired interval" in d["method"]
        elif d["n_prompts"] < 2:    # one prompt: nothing to resample, so no interval
            assert d["ci95"] is None and d["significant"] is None and "too few prompts" in d["method"], name
        else:
            assert d["ci95"][0] <= d["value"] <= d["ci95"][1], name
    fvd = lora["metrics"]["fvd"]
    assert fvd["n"] == 2 and fvd["n_ref"] == 5 and fvd["details"]["frames"] == 9
    assert any("<= feature dimension 400" in w for w in fvd["warnings"])
    for name in ("fvd", "clip_score", "fid", "kid"):   # every number from a random network says so
        assert any("random" in w for w in lora["metrics"][name]["warnings"]), name
    assert lora["metrics"]["clip_score"]["details"]["reference"] == "torchmetrics CLIPScore"
    assert body["reference"]["n"] == 5
    # Per-sample records carry their own numbers.
    s = body["samples"][0]
    assert {"clip_cosine", "sharpness", "temporal_consistency"} <= set(s["metrics"]) and s["seed"] > 0
    md = (root / "results.md").read_text()
    assert "| variant | step | scale | n |" in md and "tiny-wan.step-0000004@1 | 4 | 1.0 | 2 |" in md
    assert "## Adapters (loaded completely and proven to change the output)" in md


def test_numbers_equal_reference_formulas_on_saved_features(evaluated):
    cfg, body = evaluated
    root = cfg.out_dir
    for variant, v in body["variants"].items():
        gen, ids = load_features(root, "i3d", variant)
        real, _ = load_features(root, "i3d", "reference")
        assert ids == [s["sample_id"] for s in body["samples"] if s["variant"] == variant]
        assert v["metrics"]["fvd"]["value"] == pytest.approx(scipy_frechet(gen["features"], real["features"]), rel=1e-6)
        g, _ = load_features(root, "inception", variant)
        r, _ = load_features(root, "inception", "reference")
        g2, r2 = g["features"].reshape(-1, g["features"].shape[-1]), r["features"].reshape(-1, r["features"].shape[-1])
        assert v["metrics"]["fid"]["value"] == pytest.approx(scipy_frechet(g2, r2), rel=1e-6)
        c, _ = load_features(root, "clip", variant)
        img = c["image_emb"] / np.linalg.norm(c["image_emb"], axis=-1, keepdims=True)
        txt = c["text_emb"] / np.linalg.norm(c["text_emb"], axis=-1, keepdims=True)
        cos = np.einsum("nkd,nd->nk", img, txt).mean(1)
        assert v["metrics"]["clip_score"]["value"] == pytest.approx(100 * max(cos.mean(), 0), rel=1e-9)


def test_recompute_from_dir_reuses_features_and_counts_unreadable_samples(evaluated):
    from eval.results import recompute
    cfg, body = evaluated
    root = cfg.out_dir
    feature_files = sorted((root / "features").rglob("*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in feature_files}
    again = recompute(root, progress=False)
    assert {p: p.stat().st_mtime_ns for p in feature_files} == stamps   # nothing re-extracted
    for name, v in body["variants"].items():
        assert {k: m["value"] for k, m in again["variants"][name]["metrics"].items()} == \
               {k: m["value"] for k, m in v["metrics"].items()}
    # A damaged sample: counted, left out, named; the other variant is untouched.
    victim = root / body["samples"][0]["path"]
    victim.write_bytes(b"\x00not an mp4")
    third = recompute(root, ["metrics.bootstrap=0"], progress=False)
    base = third["variants"]["base"]["metrics"]
    assert base["fvd"]["value"] is None and "needs >= 2 generated" in base["fvd"]["skipped"]
    assert base["sharpness"]["n"] == 1
    assert any("1 sample(s) unreadable and left out: p00000-r000" in w for w in base["sharpness"]["warnings"])
    assert third["variants"]["tiny-wan.step-0000004@1"]["metrics"]["sharpness"]["n"] == 2


def test_metrics_skip_with_a_message_when_not_configured(tiny_wan, tiny_wan_run, tmp_path):
    from cluster.eval import run
    cfg = eval_cfg(tiny_wan, tmp_path, "metrics.enabled=true", "metrics.clip.path=null", "metrics.fvd.i3d_path=null",
                   "prompts.limit=1", "prompts.samples_per_prompt=2", "metrics.bootstrap=10")
    body = run(cfg, progress=False)
    m = body["variants"]["base"]["metrics"]
    assert m["fvd"]["value"] is None and "metrics.fvd.i3d_path" in m["fvd"]["skipped"]
    assert "i3d_pretrained_400" in m["fvd"]["skipped"]
    assert "metrics.clip.path" in m["clip_score"]["skipped"] and "metrics.fid.extractor" in m["fid"]["skipped"]
    assert m["sharpness"]["value"] > 0 and m["sharpness"]["n"] == 2


def _tar(path, samples):
    with tarfile.open(path, "w") as t:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def test_reference_problems_are_named(tiny_wan, tiny_metric_models, tmp_path):
    from eval.config import ConfigError
    from eval.generation import generate, make_plan
    from eval.results import finish
    (tmp_path / "empty").mkdir()
    overrides = metric_overrides(tiny_metric_models, tmp_path / "empty")
    # Missing inputs of the metrics fail before anything is generated.
    with pytest.raises(ConfigError, match="reference.shards: shard directory .*empty contains no .tar files"):
        make_plan(eval_cfg(tiny_wan, tmp_path, *overrides))
    with pytest.raises(ConfigError, match="metrics.fvd.i3d_path: .*nope.pt does not exist"):
        make_plan(eval_cfg(tiny_wan, tmp_path, *overrides, "reference.shards=null",
                           f"metrics.fvd.i3d_path={tmp_path / 'nope.pt'}"))
    assert not (tmp_path / "evals").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    _tar(bad / "000000.tar", [("a", {"txt": b"a clip", "mp4": b"garbage"}), ("b", {"txt": b"no media"})])
    plan = make_plan(eval_cfg(tiny_wan, tmp_path, *overrides, f"reference.shards={bad}"))
    records = generate(plan, progress=False)
    with pytest.raises(ConfigError, match="no usable reference sample among 2 \\(undecodable_media=1, missing_media=1"):
        finish(plan, records, progress=False)


def test_prompt_over_clip_limit_stops_before_extraction_unless_truncation_is_asked(tiny_wan, tiny_metric_models, tmp_path):
    from eval.config import ConfigError
    from eval.metrics.pipeline import build_stages
    long = " ".join(["a red circle moving left"] * 20)
    records = [{"prompt_id": "long", "prompt": long}, {"prompt_id": "ok", "prompt": "a blue square"}]
    cfg = eval_cfg(tiny_wan, tmp_path, f"metrics.clip.path={tiny_metric_models['clip']}", "metrics.fvd.i3d_path=null")
    clip = next(ex for spec, ex in build_stages(cfg, "video")[0] if spec.key == "clip")
    with pytest.raises(ConfigError, match="1 prompt\\(s\\) exceed CLIP's 77-token limit .*'long'.*metrics.clip.truncate"):
        clip.precheck(records)
    cfg = eval_cfg(tiny_wan, tmp_path, f"metrics.clip.path={tiny_metric_models['clip']}", "metrics.fvd.i3d_path=null",
                   "metrics.clip.truncate=true")
    clip = next(ex for spec, ex in build_stages(cfg, "video")[0] if spec.key == "clip")
    assert clip.precheck(records) == ["clip_score: 1 prompt(s) truncated to 77 CLIP tokens: long"]
