"""Fréchet distance against scipy (well-conditioned) and exact / high-precision references (singular)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from eval.metrics.frechet import frechet_distance, frechet_from_features, gaussian_stats


def scipy_reference(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's formula: scipy sqrtm of the (non-symmetric) product, real part."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular input; the value is what we compare
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def symmetric_scipy_reference(mu1, s1, mu2, s2) -> float:
    """Same value through sqrtm(sqrtm(S1) S2 sqrtm(S1)): symmetric PSD arguments only."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = scipy.linalg.sqrtm(s1).real
        covmean = scipy.linalg.sqrtm(r @ s2 @ r).real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def nuclear_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Exact identity for feature sets: with S_i = Z_i^T Z_i (Z_i centred rows / sqrt(N_i - 1)),
    eig(S1 S2) \\ {0} = sigma(Z1 Z2^T)^2, so Tr((S1 S2)^1/2) = nuclear norm of Z1 Z2^T. Singular
    values are perturbed by at most |dC| (no square-root amplification), so this stays accurate
    when N < D, where every matrix-square-root route loses about sqrt(eps)."""
    za = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    zb = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    diff = a.mean(0) - b.mean(0)
    tr_sqrt = np.linalg.svd(za @ zb.T, compute_uv=False).sum()
    return float(diff @ diff + (za * za).sum() + (zb * zb).sum() - 2 * tr_sqrt)


def _features(rng, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    mix = rng.normal(size=(d, d)) * scale / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_gaussian_stats_is_mean_and_unbiased_cov():
    x = np.random.default_rng(0).normal(size=(50, 7)) * 3 + 100  # large mean: no cancellation
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=1), rtol=1e-12, atol=1e-12)
    _, biased = gaussian_stats(x, ddof=0)  # StyleGAN-family normalisation
    np.testing.assert_allclose(biased, np.cov(x, rowvar=False, ddof=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_well_conditioned(seed):
    rng = np.random.default_rng(seed)
    a, b = _features(rng, 500, 32), _features(rng, 500, 32, shift=0.3, scale=1.5)
    sa, sb = gaussian_stats(a), gaussian_stats(b)
    ref = scipy_reference(*sa, *sb)
    assert frechet_distance(*sa, *sb) == pytest.approx(ref, rel=1e-6)
    assert frechet_from_features(a, b) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("n,d", [(20, 64), (5, 64), (64, 64)])
def test_rank_deficient_matches_exact_reference(n, d):
    rng = np.random.default_rng(n)
    a, b = _features(rng, n, d), _features(rng, n + 3, d, shift=0.2, scale=2.0)
    exact = nuclear_reference(a, b)
    assert frechet_from_features(a, b) == pytest.approx(exact, rel=1e-9)
    # The symmetric sqrtm route is a weaker reference here (scipy's is ~1e-7 off at N << D).
    sym = symmetric_scipy_reference(*gaussian_stats(a), *gaussian_stats(b))
    assert frechet_from_features(a, b) == pytest.approx(sym, rel=1e-6)


def test_ill_conditioned_full_rank_matches_exact_reference():
    """N > D with a covariance condition number ~1e7 (decaying spectrum, like network features):
    eigenvalue-based routes lose ~1e-9 here; the singular-value route stays at rounding level."""
    rng = np.random.default_rng(9)
    d = 120
    mix = rng.normal(size=(d, d)) * (np.linspace(1.0, 0.02, d) / np.sqrt(d))
    a, b = rng.normal(size=(700, d)) @ mix, rng.normal(size=(650, d)) @ mix + 0.05
    assert frechet_from_features(a, b) == pytest.approx(nuclear_reference(a, b), rel=1e-11)


def test_near_singular_matches_high_precision():
    """Covariances with eigenvalues spanning 14 decades, checked against 40-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(3)
    d = 20
    q1, _ = np.linalg.qr(rng.normal(size=(d, d)))
    q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1 = (q1 * np.logspace(0, -14, d)) @ q1.T
    s2 = (q2 * np.logspace(1, -12, d)) @ q2.T
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)

    with mpmath.workdps(40):
        m1, m2 = mpmath.matrix(s1.tolist()), mpmath.matrix(s2.tolist())
        e, q = mpmath.eigsy(m1)
        root = q * mpmath.diag([mpmath.sqrt(max(x, 0)) for x in e]) * q.T
        tr_sqrt = sum(mpmath.sqrt(max(x, 0)) for x in mpmath.eigsy(root * m2 * root, eigvals_only=True))
        ref = float(mpmath.mpf(float((mu1 - mu2) @ (mu1 - mu2))) + sum(m1[i, i] + m2[i, i] for i in range(d))
                    - 2 * tr_sqrt)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_commuting_covariances_closed_form():
    """Shared eigenvectors: Tr((S1 S2)^1/2) = sum sqrt(l1 * l2), including exact zeros."""
    rng = np.random.default_rng(4)
    d = 48
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    l1 = np.concatenate([np.logspace(1, -10, d - 8), np.zeros(8)])
    l2 = rng.uniform(0.1, 5.0, size=d)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    mu = rng.normal(size=d)
    ref = l1.sum() + l2.sum() - 2 * np.sqrt(l1 * l2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("n,d", [(500, 32), (20, 64)])
def test_identical_inputs_are_zero(n, d):
    a = _features(np.random.default_rng(5), n, d, scale=10.0)
    mu, sigma = gaussian_stats(a)
    scale = np.trace(sigma)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * scale
    assert abs(frechet_from_features(a, a.copy())) < 1e-8 * scale


def test_symmetric_in_arguments():
    rng = np.random.default_rng(6)
    a, b = _features(rng, 300, 24), _features(rng, 200, 24, shift=1.0, scale=0.5)
    assert frechet_from_features(a, b) == pytest.approx(frechet_from_features(b, a), rel=1e-10)


def test_float32_input_is_computed_in_float64():
    rng = np.random.default_rng(7)
    a, b = _features(rng, 300, 16).astype(np.float32), _features(rng, 300, 16, shift=0.1).astype(np.float32)
    ref = scipy_reference(*gaussian_stats(a.astype(np.float64)), *gaussian_stats(b.astype(np.float64)))
    assert frechet_from_features(a, b) == pytest.approx(ref, rel=1e-6)
    mu, sigma = gaussian_stats(a)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(10, 4\).*\(10, 5\)"):
        frechet_from_features(np.zeros((10, 4)), np.zeros((10, 5)))
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_from_features(np.full((3, 2), np.nan), np.zeros((3, 2)))
