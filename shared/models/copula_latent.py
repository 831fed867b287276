"""``dp-copula``'s latent correlation from the noisy score correlations (post-processing).

The sites release, summed over rows, the products of two columns' standardised
scores, so the server learns (with noise) their correlation c. The scores are step
functions of latent normals u, v with correlation ρ: column i's score jumps by
Δs_k at its threshold t_k (:func:`shared.models.copula_math.margin_scores`). By
Price's theorem, dE[s_i(u) s_j(v)]/dρ = Σ_k Σ_l Δs_ik Δs_jl φ₂(t_ik, t_jl; ρ), with
E = 0 at ρ = 0. The jumps are non-negative (scores rise in order), so E rises
with ρ, and ρ is read off by inverting the curve on a grid (:func:`latent_pair`).
A coarse pair needs this: two binary columns with ρ = 0.7 have a score correlation
of about 0.49, and the first-order correction c / (a_i a_j) reads 0.78.

The curve costs (K_i − 1)(K_j − 1) densities per grid point. For pairs beyond
:data:`MAX_CELLS`, the first-order correction is used, with a = Cov(score, u)
(:attr:`Steps.attenuation`); it becomes exact as the columns approach continuity.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import cumulative_trapezoid

from shared.models.copula_math import margin_scores

#: Latent correlations are kept within ±this (the grid's ends).
MAX_CORRELATION = 0.99
#: Points of the ρ grid on which E[s_i s_j] is tabulated (odd, so 0 is one of them).
GRID_POINTS = 199
#: Largest (K_i − 1)(K_j − 1) inverted exactly; larger pairs use the first-order correction.
MAX_CELLS = 4096
#: Smallest attenuation the first-order correction divides by: a column whose margin is
#: almost one code carries almost no score variance, and dividing by ~0 amplifies noise.
MIN_ATTENUATION = 0.2
#: Smallest eigenvalue kept by :func:`repair_correlation` (relative to a unit diagonal).
MIN_EIGENVALUE = 1e-3

_GRID = np.linspace(-MAX_CORRELATION, MAX_CORRELATION, GRID_POINTS)


class Steps:
    """One column's score as a step function of its latent normal: jumps at thresholds."""

    def __init__(self, margin: np.ndarray, order: np.ndarray) -> None:
        scores, thresholds = margin_scores(margin, order)
        jumps = np.diff(scores[order])
        keep = np.isfinite(thresholds) & (jumps > 0)
        self.thresholds: np.ndarray = thresholds[keep]
        self.jumps: np.ndarray = jumps[keep]
        #: Whether the column varies at all (a single-code margin has zero scores).
        self.varies = bool(np.any(scores != 0.0))
        cuts = np.concatenate([[-np.inf], thresholds, [np.inf]])
        density = np.exp(-0.5 * cuts**2) / math.sqrt(2.0 * math.pi)
        #: a = Cov(score, u), for the first-order correction.
        self.attenuation = max(float(scores[order] @ (density[:-1] - density[1:])), MIN_ATTENUATION)


def score_curve(a: Steps, b: Steps) -> np.ndarray:
    """E[s_a(u) s_b(v)] at each ρ of the grid (Price's theorem, integrated from ρ = 0)."""
    h = a.thresholds[:, None, None]
    k = b.thresholds[None, :, None]
    r = _GRID[None, None, :]
    det = 1.0 - r**2
    dens = np.exp(-(h**2 - 2.0 * r * h * k + k**2) / (2.0 * det)) / (2.0 * math.pi * np.sqrt(det))
    slope = np.einsum("i,j,ijr->r", a.jumps, b.jumps, dens)
    mid = GRID_POINTS // 2  # ρ = 0, where E = 0
    up = cumulative_trapezoid(slope[mid:], _GRID[mid:], initial=0.0)
    down = cumulative_trapezoid(slope[: mid + 1][::-1], _GRID[: mid + 1][::-1], initial=0.0)
    return np.concatenate([down[::-1][:-1], up])


def latent_pair(c: float, a: Steps, b: Steps) -> float:
    """The latent ρ whose score correlation is ``c`` (clipped to ±MAX_CORRELATION).

    Parameters
    ----------
    c : float
        The (noisy) correlation of the two columns' standardised scores.
    a, b : Steps
        The two columns.
    """
    if not (a.varies and b.varies):
        return 0.0  # a constant column correlates with nothing; its c is noise
    if len(a.jumps) * len(b.jumps) > MAX_CELLS:
        rho = c / (a.attenuation * b.attenuation)
    else:
        rho = float(np.interp(c, score_curve(a, b), _GRID))
    return float(np.clip(rho, -MAX_CORRELATION, MAX_CORRELATION))


def latent_correlation(
    pairs: np.ndarray, *, rows: float, scale: float, steps: list[Steps]
) -> np.ndarray:
    """Positive-definite latent correlation from the summed noisy pair sums.

    Parameters
    ----------
    pairs : numpy.ndarray
        Σ z_i z_j over every site's rows for each pair i < j (row-major upper triangle),
        with noise, in units of 1/``scale``.
    rows : float
        The (noisy) number of rows N the sums are over.
    scale : float
        The unit of ``pairs`` (SCORE_SCALE²).
    steps : list of Steps
        Each column's score steps under the fitted margins.

    Returns
    -------
    numpy.ndarray
        A ``(d, d)`` correlation matrix, symmetric, unit diagonal, positive definite.
    """
    d = len(steps)
    iu = np.triu_indices(d, k=1)
    c = np.asarray(pairs, dtype=np.float64) / (max(rows, 1.0) * scale)
    r = np.eye(d)
    for value, i, j in zip(c, iu[0], iu[1], strict=True):
        r[i, j] = r[j, i] = latent_pair(float(value), steps[i], steps[j])
    return repair_correlation(r)


def repair_correlation(r: np.ndarray) -> np.ndarray:
    """Eigenvalues floored at MIN_EIGENVALUE, then rescaled to a unit diagonal.

    Not the nearest correlation matrix (Higham 2002), but a cheap repair that
    leaves a matrix that is already positive definite (well above the floor) as it is.
    """
    sym = (r + r.T) / 2.0
    w, v = np.linalg.eigh(sym)
    fixed = (v * np.maximum(w, MIN_EIGENVALUE)) @ v.T
    s = np.sqrt(np.diag(fixed))
    out: np.ndarray = fixed / np.outer(s, s)
    np.fill_diagonal(out, 1.0)
    return out
