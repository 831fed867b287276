"""DP quantile encoders for numeric columns, fitted from noisy per-site histograms.

Each site counts every numeric column's values on a public grid (``bins`` equal
bins between the schema's public bounds), adds Gaussian noise, and sends the
noisy counts; the server sums them and turns each column's sum into a
piecewise-linear CDF (:class:`QuantileMap`). The map is public post-processing
of DP releases, so it can be shipped with the model and applied by every site.

Sensitivity: adding or removing one row changes one bin of each of the d
numeric columns by at most 1 (a missing value, or a value at one of the column's
public atoms, changes none), so the L2 sensitivity of
the stacked ``(d, bins)`` histogram is √d. With noise std ``σ_h · √d`` per bin
the release is the Gaussian mechanism with noise multiplier σ_h, accounted as
``(σ_h, q = 1, 1 step)`` in the same RDP/PRV composition as DP-SGD.

Post-processing: cumulative sums of the noisy counts are projected onto
non-decreasing sequences (pool-adjacent-violators, Ayer et al. 1955), clipped
to ``[0, total]`` (so no bin is negative), normalised, and mixed with a small
uniform share so the CDF is strictly increasing (invertible, every part of the
bounds reachable). A uniform CDF is exactly min–max scaling.

Columns with public atoms: only the continuous part is counted (rows at an
atom have a slot of their own in the encoding and no value to map), so the map
describes exactly the values it is applied to.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import ModelError

#: Share of uniform mass mixed into every fitted CDF (keeps it strictly increasing).
UNIFORM_SHARE = 0.01


def histogram_sensitivity(n_numeric: int) -> float:
    """L2 sensitivity √d of the stacked histograms of ``d`` numeric columns (add/remove)."""
    if n_numeric < 1:
        raise ValueError(f"need at least one numeric column, got {n_numeric}")
    return math.sqrt(n_numeric)


def column_histogram(
    values: np.ndarray,
    *,
    minimum: float,
    maximum: float,
    bins: int,
    atoms: Sequence[float] = (),
) -> np.ndarray:
    """Counts of ``values`` in ``bins`` equal bins over ``[minimum, maximum]``.

    NaN and values equal to one of the column's public ``atoms`` are skipped:
    the quantile map serves the continuous part only. Values outside the
    bounds (a validated table has none) fall in the end bins, so each row
    still moves at most one count.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x) & ~np.isin(x, np.asarray(atoms, dtype=np.float64))]
    idx = np.floor((x - minimum) / (maximum - minimum) * bins).astype(np.int64)
    return np.bincount(np.clip(idx, 0, bins - 1), minlength=bins).astype(np.float64)


def add_histogram_noise(
    counts: np.ndarray, *, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian mechanism on stacked ``(d, bins)`` counts: std ``σ_h · √d`` per bin.

    Parameters
    ----------
    counts : numpy.ndarray
        Raw counts, one row per numeric column.
    noise_multiplier : float
        σ_h, noise std in units of the L2 sensitivity √d.
    rng : numpy.random.Generator
        Source of the noise (secret at a real site).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier σ_h must be positive, got {noise_multiplier}")
    std = noise_multiplier * histogram_sensitivity(counts.shape[0])
    return counts + rng.normal(0.0, std, size=counts.shape)


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of ``y`` (pool adjacent violators)."""
    means: list[float] = []
    sizes: list[int] = []
    for v in y.tolist():
        means.append(v)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            n = sizes[-2] + sizes[-1]
            m = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / n
            means[-2:], sizes[-2:] = [m], [n]
    return np.repeat(np.array(means), sizes)


def cdf_from_counts(noisy: np.ndarray, *, uniform_share: float = UNIFORM_SHARE) -> np.ndarray:
    """Strictly increasing CDF at the ``bins + 1`` grid edges from noisy bin counts.

    Negative and empty bins are allowed; a histogram whose noisy total is not
    positive gives the uniform CDF (min–max scaling).
    """
    counts = np.asarray(noisy, dtype=np.float64)
    bins = counts.size
    cum = _isotonic(np.cumsum(counts))
    total = cum[-1]
    uniform = np.linspace(0.0, 1.0, bins + 1)
    if not total > 0:
        return uniform
    fitted = np.concatenate([[0.0], np.clip(cum, 0.0, total) / total])
    cdf = (1.0 - uniform_share) * fitted + uniform_share * uniform
    cdf[0], cdf[-1] = 0.0, 1.0
    return cdf


def check_cdf(cdf: np.ndarray, column: str) -> None:
    """Raise :class:`ModelError` unless ``cdf`` is a valid, strictly increasing CDF."""
    ok = (
        cdf.ndim == 1
        and cdf.size >= 3
        and bool(np.isfinite(cdf).all())
        and cdf[0] == 0.0
        and cdf[-1] == 1.0
        and bool((np.diff(cdf) > 0).all())
    )
    if not ok:
        raise ModelError(
            f"the numeric encoder of column {column!r} is not a strictly increasing CDF from 0 "
            "to 1: the model's weights or checkpoint are damaged. Restore the model folder "
            "(or the checkpoints folder) from the run's original output."
        )


@dataclass(frozen=True)
class QuantileMap:
    """Public piecewise-linear map of one numeric column to [-1, 1] and back.

    Attributes
    ----------
    minimum, maximum : float
        The column's public bounds.
    cdf : numpy.ndarray
        CDF values at the ``bins + 1`` equally spaced grid edges.
    """

    column: str
    minimum: float
    maximum: float
    cdf: np.ndarray

    def __post_init__(self) -> None:
        check_cdf(self.cdf, self.column)

    @property
    def edges(self) -> np.ndarray:
        """The public grid edges in the column's units."""
        return np.linspace(self.minimum, self.maximum, self.cdf.size)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Values in column units to encoded values in [-1, 1] (NaN stays NaN)."""
        u = np.interp(np.asarray(x, np.float64), self.edges, self.cdf)
        return np.asarray(2.0 * u - 1.0, dtype=np.float64)

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """Encoded values (clipped to [-1, 1]) back to column units, within the bounds."""
        p = (np.clip(np.asarray(u, np.float64), -1.0, 1.0) + 1.0) / 2.0
        x = np.interp(p, self.cdf, self.edges)
        return np.asarray(np.clip(x, self.minimum, self.maximum), dtype=np.float64)


def maps_from_cdfs(
    names: Sequence[str], bounds: Sequence[tuple[float, float]], cdfs: np.ndarray
) -> dict[str, QuantileMap]:
    """One :class:`QuantileMap` per numeric column from a ``(d, bins + 1)`` CDF matrix."""
    return {
        name: QuantileMap(name, float(lo), float(hi), np.asarray(cdfs[i], np.float64))
        for i, (name, (lo, hi)) in enumerate(zip(names, bounds, strict=True))
    }


@functools.lru_cache(maxsize=64)
def calibrate_histogram_noise(
    *,
    target_epsilon: float,
    delta: float,
    training: tuple[float, float, int],
    accountant: str = "rdp",
    others: tuple[tuple[float, float, int], ...] = (),
    hint: str = "raise encoder-budget-fraction or use numeric-encoder 'minmax'",
) -> float:
    """Smallest σ_h whose one Gaussian release composed with ``training`` stays within ε.

    Used for every one-shot release of a run (the encoder histograms, the staged
    generator's effect sums): ``others`` lists the run's other mechanisms.

    Parameters
    ----------
    target_epsilon : float
        The run's total ε per site (histogram release and DP-SGD together).
    delta : float
        Target δ.
    training : (σ, q, steps)
        The run's DP-SGD mechanism (σ already calibrated to the rest of the budget).
    accountant : {"rdp", "prv"}
    others : tuple of (σ, q, steps)
        Further mechanisms of the run (e.g. an earlier release at ``(σ_h, 1, 1)``).
    hint : str
        How to fix a run that leaves no room, for the error message.

    Returns
    -------
    float
        σ_h (noise std in units of the release's L2 sensitivity), within 0.5% of the smallest.

    Raises
    ------
    AccountingError
        If DP-SGD alone leaves no room for the release.
    """
    from shared.accounting import epsilon_of
    from shared.errors import AccountingError

    exact = functools.partial(epsilon_of, delta=delta, accountant=accountant)
    fixed = [training, *others]
    eps = _fast_rdp_epsilon(fixed, delta) if accountant == "rdp" else None

    def search(sigma_h: float) -> float:
        return eps(sigma_h) if eps is not None else exact([(sigma_h, 1.0, 1), *fixed])

    lo, hi = 0.05, 1e4
    if search(hi) > target_epsilon:
        raise AccountingError(
            f"DP-SGD (σ={training[0]:.4g}, q={training[1]:g}, {training[2]} steps) leaves no "
            f"room within ε={target_epsilon:g} for a one-shot release; {hint}"
        )
    if search(lo) <= target_epsilon:
        hi = lo
    # Bisection on log σ_h: ε decreases with σ_h, so [lo, hi] always brackets the answer.
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if search(mid) <= target_epsilon else (mid, hi)
    # The search may use the fast RDP sum; the answer must hold for the real accountant.
    while exact([(hi, 1.0, 1), *fixed]) > target_epsilon:
        hi *= 1.002
    return hi


def _fast_rdp_epsilon(
    fixed: list[tuple[float, float, int]], delta: float
) -> Callable[[float], float]:
    """ε of ``[(σ_h, 1, 1), *fixed]`` under RDP, with the fixed mechanisms' RDP computed once.

    A Gaussian mechanism without sampling has RDP α / (2 σ_h²) at order α, so only
    that term changes during the search (Mironov 2017, Prop. 7 and Prop. 1).
    """
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from shared.accounting import RDP_ORDERS

    orders = list(RDP_ORDERS)
    base = sum(
        (
            np.asarray(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders))
            for s, q, n in fixed
        ),
        start=np.zeros(len(orders)),
    )
    half_orders = np.asarray(orders) / 2.0

    def eps(sigma_h: float) -> float:
        rdp = base + half_orders / sigma_h**2
        return max(0.0, float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]))

    return eps


@dataclass(frozen=True)
class HistogramRequest:
    """What the server asks of a site in the encoder stage. Every field is public.

    Attributes
    ----------
    noise_multiplier : float
        σ_h, noise std per bin in units of the L2 sensitivity √d.
    bins : int
        Bins of the public grid per numeric column.
    """

    noise_multiplier: float
    bins: int
    schema_fingerprint: str
    accountant: str = "rdp"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HistogramRequest:
        """Parse the ``encoder-config`` record a site receives."""
        from shared.config_read import read_accountant, read_value

        return cls(
            noise_multiplier=read_value(
                config, "noise-multiplier", float, None, lambda v: v > 0, "> 0"
            ),
            bins=read_value(config, "bins", int, None, lambda v: 8 <= v <= 1024, "8..1024"),
            schema_fingerprint=read_value(config, "schema-fingerprint", str, None),
            accountant=read_accountant(config),
        )

    def to_config(self) -> dict[str, float | int | str]:
        """Flat Flower config form (round trip of :meth:`from_config`)."""
        return {
            "noise-multiplier": self.noise_multiplier,
            "bins": self.bins,
            "schema-fingerprint": self.schema_fingerprint,
            "accountant": self.accountant,
        }
