"""Fréchet distance and bootstrap replicates from Gram matrices: equal to the direct computation
(covariances and their square root) to 1e-9, and to scipy's sqrtm reference to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from eval.metrics.bootstrap import bootstrap_replicates, centred_interval, frechet_interval
from eval.metrics.frechet import frechet_from_features
from eval.metrics.gram import GramFrechet, frechet_replicates, gram_is_faster


def _sets(na: int, nb: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)  # correlated features, positive like CNN activations
    a = np.abs(rng.normal(size=(na, dim)) @ mix) + 2.0
    b = np.abs(rng.normal(size=(nb, dim)) @ mix * 1.2) + 2.1
    return a, b


def _scipy_reference(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's formula, independent of both of ours: sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("na, nb, dim", [(40, 30, 96), (70, 70, 48)])
def test_distance_equals_the_direct_computation(na, nb, dim):
    a, b = _sets(na, nb, dim)
    direct = frechet_from_features(a, b)
    assert GramFrechet(a, b).distance() == pytest.approx(direct, rel=1e-9)
    assert direct == pytest.approx(_scipy_reference(a, b), rel=1e-6)


def test_a_replicate_with_repeated_rows_equals_the_direct_computation_on_those_rows():
    a, b = _sets(50, 45, 120)
    gram = GramFrechet(a, b)
    rng = np.random.default_rng(3)
    for _ in range(5):
        ia, ib = rng.integers(0, 50, 50), rng.integers(0, 45, 45)
        assert len(np.unique(ia)) < 50  # the draw really repeats rows
        assert gram.distance(ia, ib) == pytest.approx(frechet_from_features(a[ia], b[ib]), rel=1e-9)
    ia, ib = rng.integers(0, 50, 50), rng.integers(0, 45, 45)
    assert gram.distance(ia, ib) == pytest.approx(_scipy_reference(a[ia], b[ib]), rel=1e-6)


def test_replicates_are_the_ones_the_generic_bootstrap_draws():
    a, b = _sets(40, 36, 100)
    fast = frechet_replicates(a, b, 30, seed=7)
    slow = bootstrap_replicates(frechet_from_features, [a, b], 30, 7)
    assert len(fast) == len(slow) == 30
    np.testing.assert_allclose(fast, slow, rtol=1e-9)


def test_the_interval_is_the_same_and_says_how_it_was_computed():
    a, b = _sets(30, 30, 64)
    value = frechet_from_features(a, b)
    assert gram_is_faster(a, b) and not gram_is_faster(*_sets(80, 80, 64))
    ci, how = frechet_interval(value, a, b, n_boot=40, seed=1)
    ref, ref_how = centred_interval(value, frechet_from_features, [a, b], n_boot=40, seed=1)
    assert ci == pytest.approx(ref, rel=1e-9)
    assert how["ci95_replicates_via"] == "Gram matrices (N < D)"
    assert how["ci95_percentile_raw"] == pytest.approx(ref_how["ci95_percentile_raw"], rel=1e-9)


def test_too_few_rows_or_mismatched_dimensions_are_refused():
    a, b = _sets(10, 10, 20)
    with pytest.raises(ValueError, match="one D"):
        GramFrechet(a, b[:, :10])
    with pytest.raises(ValueError, match="at least 2 rows"):
        GramFrechet(a, b).distance(np.array([3]), None)
