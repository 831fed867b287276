"""Gaussian-copula maths of ``dp-copula``: code order, normal scores, pair sums, sampling.

Each column's codes (:mod:`shared.models.marginal_columns`) are put in a public
order (:func:`code_order`) and given normal scores from the column's noisy
margin: code ``k`` scores Φ⁻¹ of its mid-CDF, standardised to mean 0 and
variance 1 under that margin (:func:`margin_scores`). The scores of one row form
a vector z; a site releases Σ z zᵀ over its rows (upper triangle, rows clipped to
‖z‖ ≤ B and rounded to integers in units of 1/:data:`SCORE_SCALE`,
:func:`clipped_scores`), whose L2 sensitivity is (SCORE_SCALE · B)²/√2
(:func:`pair_sensitivity`).

The score correlation of two discrete columns is weaker than the correlation of
the latent normals they cut; :mod:`shared.models.copula_latent` turns the noisy
score correlations back into a latent correlation matrix, and sampling cuts latent
normals at each margin's thresholds (:func:`latent_codes`). Everything here reads
only public inputs or the noisy release (post-processing), except the site-side
:func:`clipped_scores` and :func:`pair_sums` of its own rows.

References: Nelsen, *An Introduction to Copulas*, 2nd ed., Springer 2006; Li,
Xiong & Jiang, "DPSynthesizer: differentially private data synthesizer for
privacy preserving data sharing", PVLDB 7(13), 2014 (a DP Gaussian copula).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri

from shared.models.marginal_columns import Discrete, grid_cells

#: Scores are sent as integers in units of 1/SCORE_SCALE. A pair sum is at most
#: SCORE_SCALE² · B²/2 per row, and secure aggregation takes sums up to 2**31
#: (:data:`shared.distdp.release.MAX_ROWS`): with 16, a site of up to about 600,000
#: rows at d = 15 columns (B² ≈ 27), or 280,000 at d = 40.
SCORE_SCALE = 16
#: Mid-CDFs are kept this far inside (0, 1) so every score is finite.
_EDGE = 1e-6
#: Cumulative mass within this of 0 or 1 counts as none (floating-point sums).
_TINY = 1e-12


def code_order(column: Discrete, edges: np.ndarray) -> np.ndarray:
    """The codes of one column from lowest to highest (public: schema and bin edges).

    Value codes keep their order; an atom goes below the first value code when it
    is the column's minimum, otherwise just above the bin (or integer value) that
    holds it; a null code goes below everything. Categories keep the schema's order
    (``dp-copula`` reorders unordered ones by the target after its margin stage).

    Parameters
    ----------
    column : Discrete
        The column's discretisation.
    edges : numpy.ndarray
        Its bin edges on the grid (binned numeric columns; ignored otherwise).

    Returns
    -------
    numpy.ndarray
        A permutation of ``range(column.size)``: position → code.
    """
    keys = np.arange(column.size, dtype=np.float64)
    col = column.column
    if not col.is_numeric and col.nullable:
        keys[-1] = -1.0  # the null slot is a categorical column's last
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

    (min(positive, count)⁺ + m · prior) / (count⁺ + m) with m = ``noise_std``
    pseudo-rows (at least 1): a code whose count is within the noise gets about the
    prior, so noise alone cannot put a rare category at either end of the scale.

    Parameters
    ----------
    positive : numpy.ndarray
        Noisy count of each code among rows in the target's last category.
    count : numpy.ndarray
        Noisy count of each code among all rows.
    prior : float
        The target's overall share (from its noisy margin).
    noise_std : float
        The counts' public noise std.
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
    # A code with no mass at either end must never be drawn: its threshold is ±∞.
    inner = cdf[:-1]
    thresholds = np.where(
        inner <= _TINY, -np.inf, np.where(inner >= 1.0 - _TINY, np.inf, ndtri(inner))
    )
    return scores, thresholds


def clipped_scores(codes: np.ndarray, scores: list[np.ndarray], *, clip_norm: float) -> np.ndarray:
    """``(n, d)`` integer score vectors of coded rows: clipped, then rounded to the grid.

    Each row's scores are scaled down to L2 norm ≤ B − √d/(2 · SCORE_SCALE)
    (``clip_norm`` = B), multiplied by :data:`SCORE_SCALE` and rounded to the
    nearest integer. Rounding moves each coordinate by at most 1/2, so the result
    has norm ≤ SCORE_SCALE · B, and the pair sums are exact integers, as secure
    aggregation needs.

    Parameters
    ----------
    codes : numpy.ndarray
        ``(n, d)`` codes of the rows.
    scores : list of numpy.ndarray
        Each column's score per code (:func:`margin_scores`).
    clip_norm : float
        B, the bound on a row's score vector before scaling.
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


def latent_codes(
    corr: np.ndarray,
    thresholds: list[np.ndarray],
    orders: list[np.ndarray],
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(n, d)`` codes: latent u ~ N(0, corr), each column cut at its thresholds.

    Parameters
    ----------
    corr : numpy.ndarray
        ``(d, d)`` positive-definite latent correlation.
    thresholds : list of numpy.ndarray
        Each column's rising cut points (:func:`margin_scores`).
    orders : list of numpy.ndarray
        Each column's codes from lowest to highest.
    n : int
        Rows to draw.
    rng : numpy.random.Generator
        Source of the draws.
    """
    chol = np.linalg.cholesky(corr)
    u = rng.standard_normal((n, len(thresholds))) @ chol.T
    out = np.empty((n, len(thresholds)), dtype=np.int64)
    for i, (t, order) in enumerate(zip(thresholds, orders, strict=True)):
        out[:, i] = order[np.searchsorted(t, u[:, i], side="right")]
    return out
