"""A Bayesian network of degree ≤ 2 over discretised columns, chosen and fitted under DP.

Structure (server, post-processing of the noisy pair tables of
:mod:`shared.dp_marginals`): the greedy construction of PrivBayes (Zhang et
al., "PrivBayes: Private Data Release via Bayesian Networks", ACM TODS 42(4),
2017, Alg. 4) starting from the root (the target column): at each step the
column and parent set (none, one or two already placed columns) of largest
score joins. PrivBayes scores a parent set by I(X; Π), which needs 3-way
tables; only pair tables are released here, so the gain of two parents is
approximated by ``I(X; P) + I(X; Q) − min(I(X; P), I(X; Q)) · r(P, Q)`` with
``r`` the normalised information of the parents (redundant parents add little).
The score subtracts :data:`PENALTY` times the information that the noise of
the second release would fake in the table ``(Π, X)``
(:func:`shared.dp_marginals.noise_information`), so a large table is chosen
only when its signal stands out of its noise. This replaces PrivBayes's
θ-usefulness (rows per cell against noise), which assumes equal cells and so
refused tables that are large but concentrated, such as two codings of the
same variable (Adult's ``education`` and ``education_num``). When the root is
a prediction target, it stays a parent of every column it informs (the
tree-augmented naive Bayes of :func:`select_network`).

Conditional tables (the second release): each site releases the d tables
``(parents…, X)`` of the chosen network; one row adds 1 to one cell of each,
so the L2 sensitivity is √d (much smaller than the √(d(d − 1)/2) of all pairs).
The server makes each summed table non-negative with its noisy total kept
(:func:`norm_sub`, the "Norm-Sub" of Zhang et al., "PrivSyn", USENIX Security
2021: cells of pure noise go to zero instead of keeping their positive half),
then adds a pseudo-count (:func:`fit_conditionals`) towards the column's
marginal, so parent configurations drowned in noise fall back to the marginal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.dp_marginals import noise_information, to_distribution

#: Weight of the noise information in a parent set's score (1: the expected
#: information pure noise would show; tuned on public tables, see the module notes).
PENALTY = 1.0
#: Pseudo-count per cell towards the column's marginal, in units of the cell noise std
#: (tuned with :data:`PENALTY` on the cohort and Adult: 1 → 0.25 kept more association).
PRIOR_WEIGHT = 0.25
MAX_PARENTS = 2
#: Bisection steps of :func:`norm_sub` (the interval shrinks 2⁻⁶⁰ times).
NORM_SUB_STEPS = 60


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


def _penalised(
    info: np.ndarray,
    sizes: Sequence[int],
    x: int,
    parents: tuple[int, ...],
    total: float,
    cell_noise_std: float,
) -> float:
    if not parents:
        return 0.0
    k_pa = int(np.prod([sizes[p] for p in parents]))
    fake = noise_information(sizes[x], k_pa, noise_std=cell_noise_std, total=total)
    return _gain(info, x, parents) - PENALTY * fake


def select_network(
    info: np.ndarray,
    sizes: Sequence[int],
    *,
    root: int,
    total: float,
    cell_noise_std: float,
    target: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy degree-2 network from the noise-corrected pair information.

    A parent set ``Π`` of column ``x`` scores its approximate gain minus
    :data:`PENALTY` times the information noise of std ``cell_noise_std``
    would fake in the ``(Π, x)`` table; no parents scores 0.

    With ``target`` (the root is the table's prediction target), a column whose
    information with the root beats the noise of their table always keeps the
    root as one parent and picks the other greedily: the tree-augmented naive
    Bayes of Friedman, Geiger & Goldszmidt ("Bayesian Network Classifiers",
    Machine Learning 29, 1997). A model trained on the synthetic rows predicts
    the target from its Markov blanket, which greedy scoring alone can leave out
    when a column's strongest parents are other columns.

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
    target : bool
        Whether ``root`` is the prediction target (tree-augmented naive Bayes).

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
            if target and _penalised(info, sizes, x, (root,), total, cell_noise_std) > 0:
                options = [pa for pa in options if root in pa]
            for pa in options:
                g = _penalised(info, sizes, x, pa, total, cell_noise_std)
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
    support: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """P(X | parents) per column, ``(parent configurations, k_x)`` each.

    Each table is made non-negative with its total kept (:func:`norm_sub`);
    every cell then gets a pseudo-count of
    ``max(PRIOR_WEIGHT · noise_std, 0.5) · p(x)`` (``p``: the column's marginal estimate), so a
    configuration with little signal falls back to the marginal. ``support``
    (one boolean mask per column) zeroes values an earlier release found empty,
    unless that would leave a configuration with nothing.
    """
    out = []
    pos = 0
    for x in range(len(sizes)):
        shape = table_shape(sizes, x, parents[x])
        n = int(np.prod(shape))
        t = norm_sub(np.asarray(noisy[pos : pos + n], dtype=np.float64))
        pos += n
        t = (
            t.reshape(-1, sizes[x])
            + max(PRIOR_WEIGHT * noise_std, 0.5) * np.asarray(marginals[x])[None, :]
        )
        if support is not None:
            kept = t * support[x][None, :]
            t = np.where(kept.sum(axis=1, keepdims=True) > 0, kept, t)
        out.append(t / t.sum(axis=1, keepdims=True))
    if pos != len(noisy):
        raise ValueError(f"release has {len(noisy)} cells, expected {pos}")
    return out


def norm_sub(noisy: np.ndarray) -> np.ndarray:
    """Non-negative counts with the same total: ``max(v − τ, 0)`` with τ found by bisection.

    The total kept is ``max(Σ v, 1)``. Clipping at zero alone keeps every noise
    cell's positive half and so inflates sparse tables; shifting all cells by
    the same τ removes that mass where there is no signal.
    """
    v = np.asarray(noisy, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    total = max(float(v.sum()), 1.0)
    lo, hi = float(v.min()) - total, float(v.max())  # too much mass at lo, none at hi
    for _ in range(NORM_SUB_STEPS):
        tau = 0.5 * (lo + hi)
        if np.clip(v - tau, 0.0, None).sum() > total:
            lo = tau
        else:
            hi = tau
    out: np.ndarray = np.clip(v - hi, 0.0, None)
    return out


def table_margins(noisy: np.ndarray, sizes: Sequence[int], parents: np.ndarray) -> list[np.ndarray]:
    """Each column's distribution from every network table that holds it.

    A column's margin in a table sums the table's other cells, so its variance
    is that many cells' worth; the margins are averaged with the inverse
    (as :func:`shared.dp_marginals.one_way_estimates` does for pair tables),
    clipped at zero and normalised.
    """
    acc = [np.zeros(k) for k in sizes]
    weight = [0.0] * len(sizes)
    pos = 0
    for x in range(len(sizes)):
        shape = table_shape(sizes, x, parents[x])
        n = int(np.prod(shape))
        table = np.asarray(noisy[pos : pos + n], dtype=np.float64).reshape(shape)
        pos += n
        cols = [int(p) for p in parents[x] if p >= 0] + [x]
        for axis, c in enumerate(cols):
            others = tuple(a for a in range(len(cols)) if a != axis)
            acc[c] += table.sum(axis=others) / (n // sizes[c])
            weight[c] += 1.0 / (n // sizes[c])
    return [to_distribution(a / w) for a, w in zip(acc, weight, strict=True)]


def check_network(order: np.ndarray, parents: np.ndarray) -> bool:
    """Whether ``order`` is a permutation and every parent precedes its child."""
    d = len(order)
    if sorted(order.tolist()) != list(range(d)) or parents.shape != (d, MAX_PARENTS):
        return False
    rank = {int(c): i for i, c in enumerate(order)}
    return all(p < 0 or (p < d and rank[int(p)] < rank[x]) for x in range(d) for p in parents[x])
