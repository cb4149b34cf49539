"""The metric registry: every spec declares its four parts, names are unique, each compute reports
only its declared names; and the pipeline runs whatever is registered (a fake metric here)."""

import numpy as np
import pytest
from PIL import Image

from eval.metrics.base import MetricResult
from eval.metrics.registry import REGISTRY
from eval.metrics.spec import Extractor, Features, MetricInputs, MetricSpec

N = 6
RNG = np.random.default_rng(0)
# Synthetic per-sample arrays for each registered extractor, in the shapes its extractor yields.
SYNTHETIC = {
    "clip": {"image_emb": RNG.normal(size=(N, 3, 16)), "text_emb": RNG.normal(size=(N, 16)),
             "temporal": RNG.uniform(0.5, 1, N)},
    "i3d": {"features": RNG.normal(size=(N, 400))},
    "inception": {"features": RNG.normal(size=(N, 2, 32))},
    "quality": {"sharpness": RNG.uniform(10, 20, N), "psnr": RNG.uniform(10, 20, N), "ssim": RNG.uniform(0, 1, N)},
}


def _cfg(tmp_path, *overrides):
    from eval.config import load_eval_config
    return load_eval_config(None, ["metrics.bootstrap=10", *overrides], base={
        "name": "r", "output_dir": str(tmp_path), "model": {"path": str(tmp_path / "model")},
        "prompts": {"file": "prompts.txt"}})


def test_every_spec_declares_its_parts_and_unique_names():
    assert [s.key for s in REGISTRY] == ["clip", "i3d", "inception", "quality"]   # report order
    for spec in REGISTRY:
        assert isinstance(spec, MetricSpec) and spec.key and spec.names and spec.features, spec
        assert callable(spec.extractor) and callable(spec.compute), spec.key
        assert set(spec.modalities) <= {"image", "video"} and spec.modalities, spec.key
    keys = [s.key for s in REGISTRY]
    names = [n for s in REGISTRY for n in s.names]
    assert len(set(keys)) == len(keys) and len(set(names)) == len(names)


def test_settings_exist_and_unconfigured_skips_name_declared_metrics(tmp_path):
    cfg = _cfg(tmp_path, "metrics.clip.path=null", "metrics.fvd.i3d_path=null", "metrics.fid.extractor=null")
    for spec in REGISTRY:
        if spec.setting is None:
            assert spec.configured(cfg) is True and spec.unconfigured() == []
            continue
        assert spec.configured(cfg) is None, spec.setting   # AttributeError if the config key was renamed
        skips = spec.unconfigured()
        assert skips and all(r.value is None and r.skipped and r.name in spec.names for r in skips), spec.key
        assert any(spec.setting in r.skipped for r in skips), spec.key   # the message names the key to set


@pytest.mark.parametrize("modality", ["image", "video"])
def test_compute_and_per_sample_report_only_declared_names(tmp_path, modality):
    assert set(SYNTHETIC) == {s.key for s in REGISTRY}, "give a new metric synthetic features here"
    settings = _cfg(tmp_path, "metrics.fid.kid_subset_size=4", "metrics.fid.kid_subsets=3").metrics
    for spec in REGISTRY:
        if modality not in spec.modalities:
            continue
        ids = [f"s{i}" for i in range(N)]
        feats = Features(ids, SYNTHETIC[spec.key])
        assert set(feats.arrays) == set(spec.features)
        ref = Features(ids, {k: v + 0.5 for k, v in SYNTHETIC[spec.key].items()}) if spec.needs_reference else None
        out = spec.compute(MetricInputs(feats, ref, {"model": "synthetic"}, settings, modality, 10, 0))
        assert out and set(out) <= set(spec.names), (spec.key, sorted(out))
        assert all(r.name == k and r.value is not None and r.n > 0 for k, r in out.items()), spec.key
        if spec.per_sample is not None:
            assert all(len(v) == N for v in spec.per_sample(feats).values()), spec.key


# ----------------------------------------------------------------------------- a fake metric


def _fake_spec(calls, yields=("mean",), setting=None):
    def extractor(cfg, device, modality):
        def fn(batch):
            calls.append([sid for sid, _, _ in batch])
            return {name: np.asarray([m.mean() for _, m, _ in batch]) for name in yields}
        return Extractor({"what": "mean pixel", "version": 1}, fn)

    def compute(x):
        v = x.features.arrays["mean"]
        return {"mean_pixel": MetricResult("mean_pixel", float(v.mean()), len(v), details=dict(x.describe))}

    return MetricSpec(key="fake", names=("mean_pixel",), features=("mean",), extractor=extractor, compute=compute,
                      per_sample=lambda f: {"pixel_mean": f.arrays["mean"]}, setting=setting,
                      unconfigured=lambda: [MetricResult.skip("mean_pixel", "set metrics.clip.path")])


@pytest.fixture
def samples(tmp_path):
    from eval.manifest import EvalLayout
    layout = EvalLayout(tmp_path / "evals" / "r")
    records = []
    for i, level in enumerate((10, 30, 200)):
        path = layout.media("base", f"p{i}-r000", "png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(path)
        records.append({"variant": "base", "sample_id": f"p{i}-r000", "path": str(path.relative_to(layout.root))})
    return layout, records


def test_pipeline_runs_whatever_is_registered(tmp_path, samples, monkeypatch):
    import eval.metrics.registry as registry
    from eval.metrics.pipeline import compute_metrics
    from eval.variants import Variant
    layout, records = samples
    calls = []
    monkeypatch.setattr(registry, "REGISTRY", (_fake_spec(calls),))
    cfg = _cfg(tmp_path, "metrics.batch_size=2")
    out = compute_metrics(cfg, layout, "image", [Variant("base")], records, progress=False)
    m = out.variants["base"]["mean_pixel"]
    assert m.value == pytest.approx(80.0) and m.n == 3 and m.details == {"what": "mean pixel", "version": 1}
    assert out.per_sample["base"] == {"p0-r000": {"pixel_mean": 10.0}, "p1-r000": {"pixel_mean": 30.0},
                                      "p2-r000": {"pixel_mean": 200.0}}
    assert calls == [["p0-r000", "p1-r000"], ["p2-r000"]] and out.reference is None
    assert layout.features("fake", "base").is_file()
    # Same samples, same extractor: the cached features are used, nothing is extracted again.
    again = compute_metrics(cfg, layout, "image", [Variant("base")], records, progress=False)
    assert len(calls) == 2 and again.variants["base"]["mean_pixel"].value == m.value
    # A changed sample invalidates its variant's cache.
    Image.fromarray(np.full((8, 8, 3), 0, np.uint8)).save(layout.root / records[2]["path"])
    third = compute_metrics(cfg, layout, "image", [Variant("base")], records, progress=False)
    assert len(calls) == 4 and third.variants["base"]["mean_pixel"].value == pytest.approx(40 / 3)


def test_pipeline_checks_what_a_spec_declares(tmp_path, samples, monkeypatch):
    import eval.metrics.registry as registry
    from eval.config import ConfigError
    from eval.metrics.pipeline import build_stages, check_inputs, compute_metrics
    from eval.variants import Variant
    layout, records = samples
    # An extractor that yields other arrays than its spec declares is a bug, named.
    monkeypatch.setattr(registry, "REGISTRY", (_fake_spec([], yields=("mean", "extra")),))
    with pytest.raises(RuntimeError, match="extractor 'fake' yielded \\['extra', 'mean'\\], its spec declares"):
        compute_metrics(_cfg(tmp_path), layout, "image", [Variant("base")], records, progress=False)
    # Its setting: a missing file stops the eval before generation; null skips it with its message.
    monkeypatch.setattr(registry, "REGISTRY", (_fake_spec([], setting="metrics.clip.path"),))
    with pytest.raises(ConfigError, match="metrics.clip.path: .*nope does not exist"):
        check_inputs(_cfg(tmp_path, f"metrics.clip.path={tmp_path / 'nope'}"))
    stages, skips = build_stages(_cfg(tmp_path, "metrics.clip.path=null"), "image")
    assert stages == [] and skips["mean_pixel"].skipped == "set metrics.clip.path"
