"""Paired deltas between variants (eval.metrics.paired) against a direct reference computation."""

from __future__ import annotations

import numpy as np
import pytest

from eval.metrics.bootstrap import bootstrap_ci
from eval.metrics.frechet import frechet_from_features
from eval.metrics.paired import FrechetOf, MeanOf, aligned_rows, paired_delta, prompt_clusters
from eval.metrics.pipeline import comparisons
from eval.variants import Variant


def _reference_replicates(stat, va, vb, ra, rb, clusters, n_boot, seed, n_ref=0):
    """The definition, written out: draw prompts (and reference rows), recompute both metrics."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        pos = np.concatenate([clusters[c] for c in rng.integers(0, len(clusters), len(clusters))])
        ref = rng.integers(0, n_ref, n_ref) if n_ref else None
        out.append(stat(va, ra[pos], ref) - stat(vb, rb[pos], ref))
    return np.asarray(out)


def _ids(prompts, seeds):
    return [f"p{p:03d}-s{s}" for p in range(prompts) for s in range(seeds)]


def test_fid_delta_of_videos_equals_direct_frechet_on_every_replicate():
    rng = np.random.default_rng(0)
    ids = _ids(6, 2)
    k, d = 3, 24                                   # 3 frames per video, each an image for FID
    base = rng.normal(size=(len(ids), k, d))
    lora = base + rng.normal(0.3, 0.5, size=base.shape)
    ref = rng.normal(0.2, 1.0, size=(10, k, d))
    # The LoRA variant lost one sample (unreadable) and lists its rows in another order.
    order = rng.permutation(len(ids))[:-1]
    ids_lora = [ids[i] for i in order]
    common, ra, rb = aligned_rows(ids_lora, ids)
    clusters = prompt_clusters(common, lambda s: s.split("-")[0])
    assert len(common) == 11 and len(clusters) == 6 and sorted(map(len, clusters)) == [1, 2, 2, 2, 2, 2]
    a, b = FrechetOf(lora[order], ref), FrechetOf(base, ref)
    got = paired_delta(a, b, ra, rb, clusters, n_boot=40, seed=5)

    def direct(x, rows, refrows):
        refrows = np.arange(len(ref)) if refrows is None else refrows
        return frechet_from_features(x[rows].reshape(-1, d), ref[refrows].reshape(-1, d))

    xa = lora[order]
    value = direct(xa, ra, None) - direct(base, rb, None)
    assert got.value == pytest.approx(value, rel=1e-9, abs=1e-9)
    reps = _reference_replicates(direct, xa, base, ra, rb, clusters, 40, 5, n_ref=len(ref))
    lo, mid, hi = np.quantile(reps, [0.025, 0.5, 0.975])
    assert got.ci95 == pytest.approx((value + lo - mid, value + hi - mid), rel=1e-9, abs=1e-9)
    assert got.n == 11 and got.n_prompts == 6 and "re-centred" in got.method


def test_mean_delta_equals_direct_percentile_interval_and_pairing_narrows_it():
    rng = np.random.default_rng(1)
    ids = _ids(20, 2)
    prompt_effect = np.repeat(rng.normal(0.25, 0.08, 20), 2)   # prompts differ a lot...
    base = prompt_effect + rng.normal(0, 0.005, len(ids))
    lora = base + 0.01                                        # ...the LoRA adds a small, steady +1 point
    common, ra, rb = aligned_rows(ids, ids)
    clusters = prompt_clusters(common, lambda s: s.split("-")[0])
    a, b = MeanOf(lora, scale=100.0, floor=0.0), MeanOf(base, scale=100.0, floor=0.0)
    got = paired_delta(a, b, ra, rb, clusters, n_boot=200, seed=0)

    def direct(x, rows, _ref):
        return 100.0 * max(float(x[rows].mean()), 0.0)

    reps = _reference_replicates(direct, lora, base, ra, rb, clusters, 200, 0)
    assert got.value == pytest.approx(1.0, abs=1e-9)
    assert got.ci95 == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])), abs=1e-12)
    assert got.significant is True
    # The marginal intervals of the two variants overlap: unpaired, the effect could not be told from noise.
    ca = bootstrap_ci(lambda x: 100 * x.mean(), [lora], seed=0)
    cb = bootstrap_ci(lambda x: 100 * x.mean(), [base], seed=0)
    assert ca[0] < cb[1]
    assert got.ci95[1] - got.ci95[0] < 0.2 * (ca[1] - ca[0])


def test_identical_variants_have_zero_delta_and_no_effect():
    x = np.random.default_rng(2).normal(size=8)
    ids = _ids(4, 2)
    common, ra, rb = aligned_rows(ids, ids)
    got = paired_delta(MeanOf(x), MeanOf(x.copy()), ra, rb, prompt_clusters(common, lambda s: s[:4]),
                       n_boot=50, seed=0)
    assert got.value == 0.0 and got.ci95 == (0.0, 0.0) and got.significant is False
    assert got.to_dict()["significant"] is False


def test_too_few_prompts_or_samples_give_no_interval():
    x = np.arange(4, dtype=float)
    one_prompt = [np.arange(4)]
    got = paired_delta(MeanOf(x + 1), MeanOf(x), np.arange(4), np.arange(4), one_prompt, n_boot=50, seed=0)
    assert got.value == 1.0 and got.ci95 is None and got.significant is None and "too few prompts" in got.method
    empty = paired_delta(MeanOf(x), MeanOf(x), np.arange(0), np.arange(0), [], n_boot=50, seed=0)
    assert empty.value is None and empty.n == 0


def test_non_finite_samples_are_left_out_of_means_as_the_metric_does():
    a = np.array([1.0, np.inf, 3.0, 5.0])     # PSNR of an exact copy is inf: the metric skips it
    b = np.array([0.0, 0.0, 0.0, 0.0])
    got = paired_delta(MeanOf(a), MeanOf(b), np.arange(4), np.arange(4), [np.array([i]) for i in range(4)],
                       n_boot=20, seed=0)
    assert got.value == pytest.approx(3.0)


def test_comparisons_base_and_previous_checkpoint_of_the_same_run_and_scale():
    vs = [Variant("base"),
          Variant("run@s1@1", "/r", 1.0, 1, group="run"), Variant("run@s1@0.5", "/r", 0.5, 1, group="run"),
          Variant("run@s2@1", "/r", 1.0, 2, group="run"), Variant("run@s2@0.5", "/r", 0.5, 2, group="run"),
          Variant("file@1", "/f.safetensors", 1.0, None, group="file")]
    assert comparisons(vs) == [
        ("run@s1@1", "vs_base", "base"), ("run@s1@0.5", "vs_base", "base"),
        ("run@s2@1", "vs_base", "base"), ("run@s2@1", "vs_previous", "run@s1@1"),
        ("run@s2@0.5", "vs_base", "base"), ("run@s2@0.5", "vs_previous", "run@s1@0.5"),
        ("file@1", "vs_base", "base")]
    assert comparisons(vs[1:]) == [("run@s2@1", "vs_previous", "run@s1@1"),
                                   ("run@s2@0.5", "vs_previous", "run@s1@0.5")]
