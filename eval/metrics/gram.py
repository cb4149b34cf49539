"""The Fréchet distance from Gram matrices, for N < D, and its bootstrap replicates at speed.

With N samples of D-dimensional features and N < D (1,000 videos x 2,048 Inception features;
a nightly sweep of checkpoints), every covariance has rank below N, and every term of

    d^2 = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2)

follows from the N x N Gram matrices of the features: the traces from the centred self-Gram
diagonals, and Tr((S_a S_b)^1/2) as the nuclear norm of the centred cross-Gram X_a X_b^T over
sqrt((N_a-1)(N_b-1)) (the non-zero eigenvalues of S_a S_b are those of M M^T, M = X_a X_b^T).
The D x D covariances and their square root are never formed.

A bootstrap replicate draws rows with replacement: its centred Gram matrices are sub-matrices
of the full ones (rows and columns indexed by the draw), re-centred with the draw's weights,
and duplicated rows only scale singular values (a row drawn w times is one row times sqrt(w)),
so each replicate costs one SVD of about 0.63 N x 0.63 N instead of the D x D matrix square root.
Features are shifted by a common vector first (the distance does not change) so the Gram
entries stay small and the centring loses no precision.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


class GramFrechet:
    """Fréchet distances between (re-sampled) rows of two fixed feature sets ``a`` [Na, D], ``b`` [Nb, D]."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"need two [N, D] feature sets of one D, got {a.shape} and {b.shape}")
        shift = np.concatenate([a, b]).mean(axis=0)  # d^2 is translation invariant
        a, b = a - shift, b - shift
        self.na, self.nb = len(a), len(b)
        self.ka, self.kb, self.g = a @ a.T, b @ b.T, a @ b.T

    @staticmethod
    def _weights(idx: Optional[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct rows, how often each was drawn) of a draw of row indices (None: every row once)."""
        if idx is None:
            return np.arange(n), np.ones(n)
        w = np.bincount(np.asarray(idx), minlength=n)
        rows = np.flatnonzero(w)
        return rows, w[rows].astype(np.float64)

    @staticmethod
    def _centred(k: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
        """Self-Gram centred with weights ``w``: its diagonal, and mean . mean."""
        n = w.sum()
        r = k @ w / n
        grand = float(w @ r / n)
        return np.diag(k) - 2 * r + grand, grand

    def distance(self, ia: Optional[np.ndarray] = None, ib: Optional[np.ndarray] = None) -> float:
        """d^2 between rows ``ia`` of ``a`` and rows ``ib`` of ``b`` (with repeats; None: all rows).

        Covariances normalised by N - 1 (as :func:`~eval.metrics.frechet.frechet_from_features`).
        """
        ra, wa = self._weights(ia, self.na)
        rb, wb = self._weights(ib, self.nb)
        na, nb = wa.sum(), wb.sum()
        if na < 2 or nb < 2:
            raise ValueError("each set needs at least 2 rows")
        diag_a, mm_a = self._centred(self.ka[np.ix_(ra, ra)], wa)
        diag_b, mm_b = self._centred(self.kb[np.ix_(rb, rb)], wb)
        g = self.g[np.ix_(ra, rb)]
        row, col = g @ wb / nb, wa @ g / na
        cross = float(wa @ g @ wb / (na * nb))  # mean_a . mean_b
        m = g - row[:, None] - col[None, :] + cross  # centred cross-Gram on the distinct rows
        scaled = np.sqrt(wa)[:, None] * m * np.sqrt(wb)[None, :]
        nuclear = float(np.linalg.svd(scaled, compute_uv=False).sum())
        mean_term = mm_a + mm_b - 2 * cross
        return (mean_term + float(wa @ diag_a) / (na - 1) + float(wb @ diag_b) / (nb - 1)
                - 2 * nuclear / np.sqrt((na - 1) * (nb - 1)))


def frechet_replicates(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the Fréchet distance, each set resampled independently: the same
    draws, in the same order, as :func:`~eval.metrics.bootstrap.bootstrap_replicates` makes for
    ``frechet_from_features`` (so the same values, to rounding), from the Gram matrices."""
    gram = GramFrechet(a, b)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        v = gram.distance(ia, ib)
        if np.isfinite(v):
            values.append(v)
    return np.asarray(values, dtype=np.float64)


def gram_is_faster(a: np.ndarray, b: np.ndarray) -> bool:
    """The Gram route pays O(N^3) per replicate instead of O(D^3): worth it when N < D."""
    return max(len(a), len(b)) < np.asarray(a).shape[1]
