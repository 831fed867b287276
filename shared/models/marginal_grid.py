"""Post-processing of ``dp-marginal``'s grid release: bin edges, tail shapes, support.

Stage 0 of :mod:`shared.models.marginal` releases a noisy histogram of every
binned numeric column over its fine grid (:mod:`shared.models.marginal_columns`).
The server puts the bin edges at the histogram's quantiles
(:func:`quantile_edges`), fits the within-bin weights used to draw values
(:func:`shape_tails`: the two wide outer bins by a monotone fit,
:func:`monotone_tail`; :func:`fit_grid` does both) and marks the bins left
with no mass, which later stages never draw (:func:`support`). All of it
reads only the noisy release.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from scipy.optimize import isotonic_regression

from shared.dp_bayesnet import norm_sub
from shared.models import marginal_columns as mc

#: Significance (in noise stds of its mean) a block of an outer bin needs to be kept
#: (2 cut real faint tails: cohort hba1c's synthetic std was 0.57 of the real one).
TAIL_Z = 1.0
#: Significance (in noise stds) a bound's own grid cell needs to be kept: one cell
#: has no neighbours to pool with, so a point mass must stand out on its own.
BOUND_Z = 2.0


def grid_statistics(columns: list[mc.Discrete], rows: np.ndarray, bins: int) -> np.ndarray:
    """Exact grid-stage statistics: the row count, then every binned column's grid histogram.

    One row adds 1 to the count and to at most one cell of each of the b histograms,
    so the L2 sensitivity is √(1 + b).
    """
    count = np.array([float(len(rows))])
    return np.concatenate([count, mc.fine_counts(columns, rows, bins)])


def fit_grids(
    columns: list[mc.Discrete], total: np.ndarray, bins: int, *, noise_std: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """The noisy row count (at least 1), every column's bin edges and grid weights.

    Post-processing of the summed :func:`grid_statistics`; unbinned columns keep
    equal-width edges and zero weights (unused).
    """
    width = mc.fine_width(bins)
    edges = mc.uniform_edges(columns, bins)
    fine = np.zeros((len(columns), width))
    binned = [i for i, c in enumerate(columns) if c.binned]
    for k, i in enumerate(binned):
        noisy = total[1 + k * width : 1 + (k + 1) * width]
        edges[i], fine[i] = fit_grid(noisy, bins, noise_std=noise_std)
    return max(float(total[0]), 1.0), edges, fine


def quantile_edges(weights: np.ndarray, bins: int) -> np.ndarray:
    """Edges of ``bins`` bins of about equal mass under non-negative grid ``weights``.

    Every bin keeps at least one grid cell, so the edges rise strictly from 0 to
    ``len(weights)``; with no mass at all the bins are equal-width.
    """
    width = len(weights)
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    if cum[-1] <= 0:
        return mc.equal_width(bins)
    targets = cum[-1] * np.arange(1, bins) / bins
    # Edge b: the first cell after the one where the mass reaches b/bins.
    inner = np.searchsorted(cum, targets, side="left") + 1
    edges = np.concatenate([[0], inner, [width]]).astype(np.int64)
    for b in range(1, bins):  # at least one cell per bin, from the left ...
        edges[b] = max(edges[b], edges[b - 1] + 1)
    for b in range(bins - 1, 0, -1):  # ... and from the right
        edges[b] = min(edges[b], edges[b + 1] - 1)
    return edges


def shape_tails(noisy: np.ndarray, edges: np.ndarray, *, noise_std: float) -> np.ndarray:
    """Within-bin weights of one grid histogram, with the outer bins fitted monotone.

    The first and last bins are the widest (they run from a quantile to a
    public bound), so most of their grid cells hold no rows, only noise; the
    positive part that :func:`shared.dp_bayesnet.norm_sub` keeps there would be
    drawn as values far out in the tail, inflating the column's variance and
    diluting its correlations. Their inner cells are fitted instead by
    :func:`monotone_tail` (a density falling away from the bulk beyond the
    outer quantiles, kept only while it stands out of the noise). A bound's own
    cell (point mass at the minimum or maximum) keeps its count only above
    :data:`BOUND_Z` noise stds. Inner bins keep ``norm_sub``'s weights.
    Post-processing of the grid release.

    Parameters
    ----------
    noisy : numpy.ndarray
        The column's summed noisy grid histogram (``fine_width(bins)`` cells).
    edges : numpy.ndarray
        The column's bin edges over the grid (from :func:`quantile_edges`).
    noise_std : float
        Noise std per cell of ``noisy`` (0 without DP).
    """
    v = np.asarray(noisy, dtype=np.float64)
    return _shaped(v, norm_sub(v), edges, noise_std)


def fit_grid(noisy: np.ndarray, bins: int, *, noise_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges at the noisy histogram's quantiles and the within-bin weights for them.

    Norm-Sub is computed once: the edges use it, and so do the inner bins'
    weights (:func:`shape_tails`).
    """
    v = np.asarray(noisy, dtype=np.float64)
    base = norm_sub(v)
    edges = quantile_edges(base, bins)
    return edges, _shaped(v, base, edges, noise_std)


def _shaped(v: np.ndarray, base: np.ndarray, edges: np.ndarray, noise_std: float) -> np.ndarray:
    out = base.copy()
    last = len(v) - 1
    first_bin = np.arange(min(int(edges[1]), last) - 1, 0, -1)  # from the bulk outwards
    last_bin = np.arange(max(int(edges[-2]), 1), last)
    for cells in (first_bin, last_bin):
        out[cells] = monotone_tail(v[cells], noise_std=noise_std)
    for bound in (0, last):
        out[bound] = v[bound] if v[bound] > BOUND_Z * noise_std else 0.0
    return out


def monotone_tail(noisy: np.ndarray, *, noise_std: float) -> np.ndarray:
    """Non-increasing, non-negative fit of noisy counts ordered from the bulk outwards.

    Isotonic regression (``scipy.optimize.isotonic_regression``) pools the
    counts into blocks of falling means, which averages the noise of empty
    cells; walking outwards, the fit stops (zero from there on) at the first
    block whose mean is not above :data:`TAIL_Z` times its noise std
    ``noise_std / √length``, so pure noise leaves little tail behind.
    """
    v = np.asarray(noisy, dtype=np.float64)
    out = np.zeros(len(v))
    if len(v) == 0:
        return out
    fit = isotonic_regression(v, increasing=False)
    starts = fit.blocks
    for a, b in pairwise(starts):
        if fit.x[a] <= TAIL_Z * noise_std / np.sqrt(b - a) or fit.x[a] <= 0:
            break
        out[a:b] = fit.x[a]
    return out


def support(columns: list[mc.Discrete], fine: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    """Per column, which codes may be drawn: a bin whose grid cells all lost their mass may not.

    Such a bin holds only noise in the later tables; drawn, it would be filled
    uniformly over its (often wide, empty) range. Atoms, nulls, categories and
    every code of a column with no grid mass at all stay allowed.
    """
    out = []
    for i, c in enumerate(columns):
        allowed = np.ones(c.size, dtype=bool)
        if c.binned and fine[i].sum() > 0:
            allowed[: c.values] = np.add.reduceat(fine[i], edges[i][:-1]) > 0
        out.append(allowed)
    return out
