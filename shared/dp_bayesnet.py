"""A Bayesian network of degree ≤ 2 over discretised columns, chosen and fitted under DP.

Structure (server, post-processing of the noisy pair tables of
:mod:`shared.dp_marginals`): the greedy construction of PrivBayes (Zhang et
al., "PrivBayes: Private Data Release via Bayesian Networks", ACM TODS 42(4),
2017, Alg. 4) starting from the root (the target column): at each step the
column and parent set (none, one or two already placed columns) of largest
gain joins. PrivBayes scores a parent set by I(X; Π), which needs 3-way
tables; only pair tables are released here, so the gain of two parents is
approximated by ``I(X; P) + I(X; Q) − min(I(X; P), I(X; Q)) · r(P, Q)`` with
``r`` the normalised information of the parents (redundant parents add little).
A parent set is allowed only if its table is *useful*: at least
:data:`USEFULNESS` expected rows per cell for each unit of noise std (the
θ-usefulness of PrivBayes, Sec. 4.3).

Conditional tables (the second release): each site releases the d tables
``(parents…, X)`` of the chosen network; one row adds 1 to one cell of each,
so the L2 sensitivity is √d (much smaller than the √(d(d − 1)/2) of all pairs).
The server clips the summed tables at zero and adds a pseudo-count
(:func:`fit_conditionals`) towards the column's marginal, so parent
configurations drowned in noise fall back to the marginal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Expected rows per cell per unit of per-cell noise std for a table to be used.
USEFULNESS = 4.0
MAX_PARENTS = 2


def _gain(info: np.ndarray, x: int, parents: tuple[int, ...]) -> float:
    if not parents:
        return 0.0
    if len(parents) == 1:
        return float(info[x, parents[0]])
    p, q = parents
    a, b = float(info[x, p]), float(info[x, q])
    scale = min(info[p, p], info[q, q])
    redundancy = float(np.clip(info[p, q] / scale, 0.0, 1.0)) if scale > 0 else 1.0
    return a + b - min(a, b) * redundancy


def select_network(
    info: np.ndarray,
    sizes: Sequence[int],
    *,
    root: int,
    total: float,
    cell_noise_std: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy degree-2 network from the noise-corrected pair information.

    Parameters
    ----------
    info : numpy.ndarray
        ``(d, d)`` pair information (diagonal: entropies), from
        :func:`shared.dp_marginals.pair_information`.
    sizes : sequence of int
        Domain size of each column.
    root : int
        First column (no parents).
    total : float
        Estimated row count N (a DP estimate).
    cell_noise_std : float
        Noise std per cell of the second release's summed tables (0 without DP).

    Returns
    -------
    (order, parents)
        ``order``: columns in sampling order; ``parents``: ``(d, 2)`` int64,
        each column's parents (earlier in ``order``), -1 where none.
    """
    d = len(sizes)
    order, placed = [root], {root}
    parents = np.full((d, MAX_PARENTS), -1, dtype=np.int64)
    while len(order) < d:
        best: tuple[float, int, tuple[int, ...]] = (-np.inf, -1, ())
        for x in (c for c in range(d) if c not in placed):
            prior = sorted(placed)
            options = [(), *((p,) for p in prior)]
            options += [(p, q) for i, p in enumerate(prior) for q in prior[i + 1 :]]
            for pa in options:
                cells = sizes[x] * int(np.prod([sizes[p] for p in pa]))
                if pa and total / cells < USEFULNESS * cell_noise_std:
                    continue
                g = _gain(info, x, pa)
                if g > best[0]:
                    best = (g, x, pa)
        _, x, pa = best
        parents[x, : len(pa)] = pa
        order.append(x)
        placed.add(x)
    return np.asarray(order, dtype=np.int64), parents


def table_shape(sizes: Sequence[int], x: int, parents: np.ndarray) -> tuple[int, ...]:
    """Shape ``(k_parent…, k_x)`` of column ``x``'s released table."""
    return (*(sizes[int(p)] for p in parents if p >= 0), sizes[x])


def node_tables(codes: np.ndarray, sizes: Sequence[int], parents: np.ndarray) -> np.ndarray:
    """Exact counts of every column's ``(parents…, X)`` table, concatenated (column order)."""
    parts = []
    for x in range(len(sizes)):
        shape = table_shape(sizes, x, parents[x])
        cols = [int(p) for p in parents[x] if p >= 0] + [x]
        flat = np.ravel_multi_index(tuple(codes[:, c] for c in cols), shape)
        parts.append(np.bincount(flat, minlength=int(np.prod(shape))))
    return np.concatenate(parts).astype(np.float64)


def fit_conditionals(
    noisy: np.ndarray,
    sizes: Sequence[int],
    parents: np.ndarray,
    marginals: Sequence[np.ndarray],
    *,
    noise_std: float,
) -> list[np.ndarray]:
    """P(X | parents) per column, ``(parent configurations, k_x)`` each.

    Cells are clipped at zero; every cell gets a pseudo-count of
    ``max(noise_std, 0.5) · p(x)`` (``p``: the column's marginal estimate), so a
    configuration with little signal falls back to the marginal.
    """
    out = []
    pos = 0
    for x in range(len(sizes)):
        shape = table_shape(sizes, x, parents[x])
        n = int(np.prod(shape))
        t = np.clip(np.asarray(noisy[pos : pos + n], dtype=np.float64), 0.0, None)
        pos += n
        t = t.reshape(-1, sizes[x]) + max(noise_std, 0.5) * np.asarray(marginals[x])[None, :]
        out.append(t / t.sum(axis=1, keepdims=True))
    if pos != len(noisy):
        raise ValueError(f"release has {len(noisy)} cells, expected {pos}")
    return out


def check_network(order: np.ndarray, parents: np.ndarray) -> bool:
    """Whether ``order`` is a permutation and every parent precedes its child."""
    d = len(order)
    if sorted(order.tolist()) != list(range(d)) or parents.shape != (d, MAX_PARENTS):
        return False
    rank = {int(c): i for i, c in enumerate(order)}
    return all(p < 0 or (p < d and rank[int(p)] < rank[x]) for x in range(d) for p in parents[x])
