"""Gaussian-copula maths of ``dp-copula``: normal scores, the score correlation, the latent one.

Each column's codes (:mod:`shared.models.marginal_columns`) are put in a public
order (:func:`code_order`) and given normal scores from the column's noisy
margin: code ``k`` scores Φ⁻¹ of its mid-CDF, standardised to mean 0 and
variance 1 under that margin (:func:`margin_scores`). The scores of one row form
a vector z; a site releases Σ z zᵀ over its rows (upper triangle, rows clipped to
‖z‖ ≤ B and rounded to integers in units of 1/:data:`SCORE_SCALE`,
:func:`clipped_scores`), whose L2 sensitivity is (SCORE_SCALE · B)²/√2
(:func:`pair_sensitivity`).

The score correlation of a discrete column is weaker than the correlation of the
latent normal it cuts: if a latent u ~ N(0, 1) is cut at the margin's
thresholds t_k, Cov(z̃, u) = Σ_k z̃_k (φ(t_{k−1}) − φ(t_k)) =: a (:func:`attenuation`),
and the score correlation of two columns is about a_i a_j ρ_ij. The latent
correlation is therefore estimated as C_ij / (a_i a_j), clipped and repaired to
the nearest positive-definite correlation matrix (:func:`latent_correlation`).
Everything here reads only public inputs or the noisy release (post-processing).

References: Nelsen, *An Introduction to Copulas*, 2nd ed., Springer 2006; Li,
Xiong & Jiang, "DPSynthesizer: differentially private data synthesizer for
privacy preserving data sharing", PVLDB 7(13), 2014 (a DP Gaussian copula).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

from shared.models.marginal_columns import Discrete, grid_cells

#: Smallest attenuation a divides by: a column whose margin is almost one code
#: carries almost no score variance, and dividing by ~0 would only amplify noise.
MIN_ATTENUATION = 0.2
#: Latent correlations are kept within ±this before the positive-definite repair.
MAX_CORRELATION = 0.99
#: Smallest eigenvalue kept by the repair (relative to a unit diagonal).
MIN_EIGENVALUE = 1e-3
#: Scores are sent as integers in units of 1/SCORE_SCALE. A pair sum is at most
#: SCORE_SCALE² · B²/2 per row, and secure aggregation takes sums up to 2**31
#: (:data:`shared.distdp.release.MAX_ROWS`): with 16, a site of up to about 600,000
#: rows at d = 15 columns (B² ≈ 27), or 280,000 at d = 40.
SCORE_SCALE = 16
#: Mid-CDFs are kept this far inside (0, 1) so every score is finite.
_EDGE = 1e-6


def code_order(column: Discrete, edges: np.ndarray) -> np.ndarray:
    """The codes of one column from lowest to highest (public: schema and bin edges).

    Value codes keep their order; an atom goes below the first value code when it
    is the column's minimum, otherwise just above the bin (or integer value) that
    holds it; a null code goes below everything. Categories keep the schema's order.
    """
    keys = np.arange(column.size, dtype=np.float64)
    col = column.column
    if col.is_numeric and column.mode is not None:
        atoms = [float(a) for a in (col.atoms or [])]
        lo, hi = float(col.minimum), float(col.maximum)
        for j in range(column.size - column.values):
            if j >= len(atoms):  # the null code
                keys[column.values + j] = -1.0
                continue
            scaled = -1.0 + 2.0 * (atoms[j] - lo) / (hi - lo) if hi > lo else -1.0
            if column.binned:
                cell = int(grid_cells(np.array([scaled]), len(edges) - 1)[0])
                at = int(np.searchsorted(edges[1:-1], cell, side="right"))
            else:
                at = round((scaled + 1.0) / 2.0 * (column.values - 1))
            keys[column.values + j] = -0.5 if atoms[j] <= lo else at + 0.5
    return np.argsort(keys, kind="stable")


def shrunk_share(
    positive: np.ndarray, count: np.ndarray, *, prior: float, noise_std: float
) -> np.ndarray:
    """Each code's noisy share of positive rows, shrunk towards ``prior`` where counts are few.

    (max(positive, 0) + m · prior) / (max(count, 0) + m) with m = ``noise_std``
    pseudo-rows: a code whose count is within the noise gets about the prior, so
    noise alone cannot put a rare category at either end of the scale.
    """
    m = max(noise_std, 1.0)
    pos = np.clip(np.asarray(positive, dtype=np.float64), 0.0, None)
    cnt = np.clip(np.asarray(count, dtype=np.float64), 0.0, None)
    out: np.ndarray = (np.minimum(pos, cnt) + m * prior) / (cnt + m)
    return out


def margin_scores(margin: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardised normal scores of every code and the latent thresholds, under ``margin``.

    Parameters
    ----------
    margin : numpy.ndarray
        Probabilities of the column's codes (non-negative, summing to 1).
    order : numpy.ndarray
        :func:`code_order` of the column.

    Returns
    -------
    scores : numpy.ndarray
        Score of each code (indexed by code), mean 0 and variance 1 under ``margin``
        (all 0 if the margin has a single code).
    thresholds : numpy.ndarray
        ``len(margin) − 1`` rising latent cut points, in ``order``.
    """
    p = np.asarray(margin, dtype=np.float64)[order]
    cdf = np.cumsum(p)
    mid = np.clip(cdf - p / 2.0, _EDGE, 1.0 - _EDGE)
    z = ndtri(mid)
    mean = float(p @ z)
    sd = math.sqrt(max(float(p @ (z - mean) ** 2), 0.0))
    standard = (z - mean) / sd if sd > 1e-9 else np.zeros_like(z)
    scores = np.empty_like(standard)
    scores[order] = standard
    thresholds = ndtri(np.clip(cdf[:-1], _EDGE, 1.0 - _EDGE))
    return scores, thresholds


def attenuation(margin: np.ndarray, order: np.ndarray) -> float:
    """a = Cov(score, u) for u ~ N(0, 1) cut at the margin's thresholds (at least MIN_ATTENUATION)."""
    scores, thresholds = margin_scores(margin, order)
    cuts = np.concatenate([[-np.inf], thresholds, [np.inf]])
    density = np.exp(-0.5 * cuts**2) / math.sqrt(2.0 * math.pi)
    a = float(scores[order] @ (density[:-1] - density[1:]))
    return max(a, MIN_ATTENUATION)


def clipped_scores(codes: np.ndarray, scores: list[np.ndarray], *, clip_norm: float) -> np.ndarray:
    """``(n, d)`` integer score vectors of coded rows: clipped, then rounded to the grid.

    Each row's scores are scaled down to L2 norm ≤ B − √d/(2 · SCORE_SCALE)
    (``clip_norm`` = B), multiplied by :data:`SCORE_SCALE` and rounded to the
    nearest integer. Rounding moves each coordinate by at most 1/2, so the result
    has norm ≤ SCORE_SCALE · B, and the pair sums are exact integers, as secure
    aggregation needs.
    """
    z = np.stack([s[codes[:, i]] for i, s in enumerate(scores)], axis=1)
    inner = max(clip_norm - math.sqrt(z.shape[1]) / (2.0 * SCORE_SCALE), 0.0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    scale = np.minimum(1.0, inner / np.maximum(norms, 1e-12))
    out: np.ndarray = np.rint(z * scale * SCORE_SCALE)
    return out


def pair_sums(z: np.ndarray) -> np.ndarray:
    """Σ_rows z_i z_j for every pair i < j (row-major upper triangle)."""
    iu = np.triu_indices(z.shape[1], k=1)
    out: np.ndarray = (z.T @ z)[iu]
    return out


def pair_sensitivity(clip_norm: float) -> float:
    """Δ = (SCORE_SCALE · B)²/√2: L2 norm of one row's pair products when ‖z‖ ≤ SCORE_SCALE · B.

    Σ_{i<j} z_i² z_j² = (‖z‖⁴ − Σ z_i⁴)/2 ≤ ‖z‖⁴/2.
    """
    return (SCORE_SCALE * clip_norm) ** 2 / math.sqrt(2.0)


def latent_correlation(pairs: np.ndarray, *, rows: float, attenuations: np.ndarray) -> np.ndarray:
    """Positive-definite latent correlation from noisy pair sums (post-processing).

    Parameters
    ----------
    pairs : numpy.ndarray
        Summed (noisy) :func:`pair_sums` of every site (in units of 1/SCORE_SCALE²).
    rows : float
        The (noisy) number of rows N the sums are over.
    attenuations : numpy.ndarray
        :func:`attenuation` of each column.
    """
    d = len(attenuations)
    iu = np.triu_indices(d, k=1)
    c = np.zeros((d, d))
    c[iu] = np.asarray(pairs, dtype=np.float64) / (max(rows, 1.0) * SCORE_SCALE**2)
    c = c + c.T
    r = np.clip(c / np.outer(attenuations, attenuations), -MAX_CORRELATION, MAX_CORRELATION)
    np.fill_diagonal(r, 1.0)
    return nearest_correlation(r)


def nearest_correlation(r: np.ndarray) -> np.ndarray:
    """Eigenvalues floored at MIN_EIGENVALUE, then rescaled to a unit diagonal."""
    sym = (r + r.T) / 2.0
    w, v = np.linalg.eigh(sym)
    fixed = (v * np.maximum(w, MIN_EIGENVALUE)) @ v.T
    s = np.sqrt(np.diag(fixed))
    out: np.ndarray = fixed / np.outer(s, s)
    np.fill_diagonal(out, 1.0)
    return out


def latent_codes(
    corr: np.ndarray,
    thresholds: list[np.ndarray],
    orders: list[np.ndarray],
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(n, d)`` codes: latent u ~ N(0, corr), each column cut at its thresholds."""
    chol = np.linalg.cholesky(corr)
    u = rng.standard_normal((n, len(thresholds))) @ chol.T
    out = np.empty((n, len(thresholds)), dtype=np.int64)
    for i, (t, order) in enumerate(zip(thresholds, orders, strict=True)):
        out[:, i] = order[np.searchsorted(t, u[:, i], side="right")]
    return out


def latent_cdf(thresholds: np.ndarray) -> np.ndarray:
    """The margin the thresholds cut, in order (for checks): Φ(t_k) − Φ(t_{k−1})."""
    return np.diff(np.concatenate([[0.0], ndtr(thresholds), [1.0]]))
