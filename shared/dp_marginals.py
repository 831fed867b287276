"""Noisy 2-way marginals of discretised columns, and the pairwise information they show.

Structure release (per site; stage 1 of the three releases of ``dp-marginal``).
Every column is discretised from the public schema and the grid release (stage 0)
(:mod:`shared.models.marginal_columns`), and the site counts the 2-way contingency
table of every pair of columns: m = d(d − 1)/2 tables. Adding or removing one
row adds or removes exactly 1 in one cell of each table, so the L2 sensitivity
of the concatenated tables is √m; with noise std σ·√m per cell the release is
the Gaussian mechanism with noise multiplier σ, accounted as ``(σ, q = 1, 1 step)``
like the DP quantile encoder's histograms (:mod:`shared.dp_quantile`).

The 1-way tables are not released separately: each column's margin is read off
the d − 1 pair tables that contain it (inverse-variance weighted, see
:func:`one_way_estimates`), which is several times more precise than a 1-way
table of its own would be at the same total budget.

Fit (server; post-processing only). Negative cells are clipped to zero, each
pair table is raked to the 1-way estimates (iterative proportional fitting,
Deming & Stephan 1940), and the pairs' mutual information is measured
(:func:`pair_information`) to choose the structure of a Bayesian network
(:mod:`shared.dp_bayesnet`). Noise inflates the measured information of large
tables, so each pair's information is reduced by a noise correction
(:func:`noise_information`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Raking sweeps per pair table (each sweep matches both margins once).
RAKING_SWEEPS = 10


def pair_list(d: int) -> list[tuple[int, int]]:
    """The released pairs ``(i, j)``, ``i < j``, in a fixed public order."""
    return [(i, j) for i in range(d) for j in range(i + 1, d)]


def release_sensitivity(n_tables: int) -> float:
    """L2 sensitivity √m of ``m`` concatenated contingency tables (add/remove one row)."""
    if n_tables < 1:
        raise ValueError(f"need at least one table, got {n_tables}")
    return math.sqrt(n_tables)


def release_length(sizes: Sequence[int]) -> int:
    """Number of cells of all pair tables of columns with domain ``sizes``."""
    return sum(sizes[i] * sizes[j] for i, j in pair_list(len(sizes)))


def pair_tables(codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Exact counts of every pair table, concatenated (row-major ``(k_i, k_j)`` each).

    Parameters
    ----------
    codes : numpy.ndarray
        ``(n, d)`` integer codes, column ``i`` in ``[0, sizes[i])``.
    sizes : sequence of int
        Domain size of each column.
    """
    codes = np.asarray(codes, dtype=np.int64)
    parts = [
        np.bincount(codes[:, i] * sizes[j] + codes[:, j], minlength=sizes[i] * sizes[j])
        for i, j in pair_list(len(sizes))
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def split_tables(flat: np.ndarray, sizes: Sequence[int]) -> dict[tuple[int, int], np.ndarray]:
    """The concatenated vector back into one ``(k_i, k_j)`` table per pair."""
    out: dict[tuple[int, int], np.ndarray] = {}
    pos = 0
    for i, j in pair_list(len(sizes)):
        n = sizes[i] * sizes[j]
        out[(i, j)] = np.asarray(flat[pos : pos + n], dtype=np.float64).reshape(sizes[i], sizes[j])
        pos += n
    if pos != len(flat):
        raise ValueError(f"release has {len(flat)} cells, expected {pos} for domains {sizes}")
    return out


def one_way_estimates(
    tables: dict[tuple[int, int], np.ndarray], sizes: Sequence[int]
) -> list[np.ndarray]:
    """Each column's distribution from the margins of the pair tables holding it.

    A margin of table (i, j) sums ``k_j`` noisy cells, so its variance is
    ``k_j`` times a cell's; the margins are averaged with weights ``1 / k_j``
    (inverse variance), clipped at zero and normalised (uniform if nothing is left).
    """
    out = []
    for c, k in enumerate(sizes):
        acc, weight = np.zeros(k), 0.0
        for (i, j), t in tables.items():
            if c in (i, j):
                other = sizes[j] if c == i else sizes[i]
                acc += (t.sum(axis=1) if c == i else t.sum(axis=0)) / other
                weight += 1.0 / other
        out.append(to_distribution(acc / weight if weight else np.ones(k)))
    return out


def to_distribution(counts: np.ndarray) -> np.ndarray:
    """Noisy counts clipped at zero and normalised (uniform if nothing is left)."""
    p = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    return p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))


def rake(table: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Non-negative joint distribution close to ``table`` with margins ``row`` and ``col``.

    Clips at zero, adds a tiny uniform floor (so every cell the margins allow
    can be reached), then alternately rescales rows and columns.
    """
    t = np.clip(np.asarray(table, dtype=np.float64), 0.0, None)
    t = t / t.sum() if t.sum() > 0 else np.ones_like(t) / t.size
    t = t + 1e-9
    for _ in range(RAKING_SWEEPS):
        t *= (row / np.maximum(t.sum(axis=1), 1e-300))[:, None]
        t *= (col / np.maximum(t.sum(axis=0), 1e-300))[None, :]
    return np.asarray(t / t.sum(), dtype=np.float64)


def mutual_information(joint: np.ndarray) -> float:
    """I(X; Y) in nats of a joint distribution (zero cells contribute nothing)."""
    p = np.asarray(joint, dtype=np.float64)
    p = p / p.sum()
    indep = np.outer(p.sum(axis=1), p.sum(axis=0))
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / indep[mask])))


def noise_information(k_i: int, k_j: int, *, noise_std: float, total: float) -> float:
    """Information a table of pure noise would show (a Miller–Madow-style correction).

    To second order, noise ``E`` on the counts of an independent ``(k_i, k_j)``
    table adds ``Σ E² / (2 N² p_a p_b)`` nats; with cells of equal mass and the
    margins' share removed this is ``σ_cell² (k_i − 1)(k_j − 1) k_i k_j / (2 N²)``.
    It is an approximation (cells are not equal), used only to rank pairs.
    """
    if noise_std <= 0 or total <= 0:
        return 0.0
    return noise_std**2 * (k_i - 1) * (k_j - 1) * k_i * k_j / (2.0 * total**2)


def pair_information(
    noisy: np.ndarray, sizes: Sequence[int], *, noise_std: float
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Noise-corrected mutual information of every pair, the margins, and N.

    Parameters
    ----------
    noisy : numpy.ndarray
        Concatenated pair tables (:func:`pair_tables` layout), summed over sites.
    sizes : sequence of int
        Domain size of each column.
    noise_std : float
        Public std of the noise on each cell of ``noisy`` (0 without DP).

    Returns
    -------
    (information, margins, total)
        ``(d, d)`` symmetric matrix of I(i; j) minus :func:`noise_information`
        (diagonal: the column's entropy); each column's distribution; the
        estimated row count N (from the tables' own noisy totals: post-processing).
    """
    d = len(sizes)
    tables = split_tables(noisy, sizes)
    margins = one_way_estimates(tables, sizes)
    total = max(float(np.mean([t.sum() for t in tables.values()])) if tables else 0.0, 1.0)
    info = np.zeros((d, d))
    for (i, j), t in tables.items():
        joint = rake(t, margins[i], margins[j])
        bias = noise_information(sizes[i], sizes[j], noise_std=noise_std, total=total)
        info[i, j] = info[j, i] = mutual_information(joint) - bias
    for c, p in enumerate(margins):
        info[c, c] = float(-np.sum(p[p > 0] * np.log(p[p > 0])))
    return info, margins, total
