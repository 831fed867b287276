"""The guarantee of distributed DP-SGD, per level of collusion.

Each of the ``K`` sites the noise is split over adds discrete Gaussian noise of
variance ``σ²C²/K`` (in float units) to its rounded clipped gradient sum; the sum
carries variance ``σ²C²``, the noise of central DP-SGD.

* **Rounding slack.** Stochastic rounding to a grid of step γ moves each
  coordinate by less than γ; with the same rounding draws, two neighbouring
  datasets give rounded sums at L2 distance at most ``Δ = C + γ√d`` (d: the number
  of parameters). We account with sensitivity Δ, i.e. noise multiplier
  ``σ C / Δ``; the rounding randomness is then a mixture the bound covers.
* **Sum of discrete Gaussians.** A sum of K discrete Gaussians is not exactly a
  discrete Gaussian; Kairouz, Liu & Steinke (ICML 2021, Thm. 1) bound the extra
  concentrated-DP cost by ``τ d`` with ``τ = 10 Σ_{k=1}^{K-1} exp(-2π² s² k/(k+1))``,
  ``s`` the per-site scale in grid units. We require ``τ d < 1e-12`` and then
  account the step as the Poisson-subsampled Gaussian (Opacus RDP/PRV), the same
  approximation Kairouz et al. make for subsampling.
* **Collusion.** If the server colludes with ``t`` sites, those sites' noise is
  known and the honest noise has multiplier ``σ √((K − t)/K)``.
"""

from __future__ import annotations

import math

from shared.accounting import epsilon_of
from shared.errors import AccountingError

TAU_LIMIT = 1e-12


def sensitivity(*, clip_norm: float, grid: float, dim: int) -> float:
    """Δ = C + γ√d: L2 sensitivity of a site's rounded clipped sum (float units)."""
    return clip_norm + grid * math.sqrt(dim)


def sum_divergence(*, sigma: float, clip_norm: float, grid: float, sites: int) -> float:
    """τ of Kairouz et al. for ``sites`` discrete Gaussians of variance σ²C²/K each."""
    if sites <= 1:
        return 0.0
    s2 = (sigma * clip_norm / grid) ** 2 / sites
    return 10.0 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, sites))


def effective_sigma(*, sigma: float, sites: int, colluders: int) -> float:
    """Noise multiplier left when ``colluders`` of the ``sites`` noise shares are known.

    Raises
    ------
    AccountingError
        If no honest share is left (``colluders >= sites``) or ``colluders < 0``.
    """
    if not 0 <= colluders < sites:
        raise AccountingError(
            f"{colluders} colluding site(s) out of {sites}: at least one honest site is needed "
            "for any noise to remain; lower the collusion level"
        )
    return sigma * math.sqrt((sites - colluders) / sites)


def distributed_epsilon(
    *,
    sigma: float,
    sample_rate: float,
    steps: int,
    delta: float,
    clip_norm: float,
    grid: float,
    dim: int,
    sites: int,
    colluders: int = 0,
    accountant: str = "rdp",
) -> float:
    """ε of ``steps`` distributed DP-SGD steps against the server and ``colluders`` sites.

    Parameters
    ----------
    sigma : float
        σ: total noise std (all shares together) in units of the clip norm C.
    sample_rate : float
        q: Poisson rate of each row per step.
    steps : int
        DP-SGD steps (one per secure round).
    delta : float
        Target δ.
    clip_norm : float
        C: per-row gradient L2 bound.
    grid : float
        γ: grid step of the integer encoding (float units).
    dim : int
        d: number of model parameters.
    sites : int
        K: number of noise shares (the noise is split over K sites).
    colluders : int
        t: sites colluding with the server (their noise shares are known).
    accountant : {"rdp", "prv"}

    Raises
    ------
    AccountingError
        If the sum of discrete Gaussians is not close enough to one (grid too coarse).
    """
    eff = effective_sigma(sigma=sigma, sites=sites, colluders=colluders)
    multiplier = accounting_multiplier(
        sigma=sigma, clip_norm=clip_norm, grid=grid, dim=dim, sites=sites
    ) * (eff / sigma)
    return epsilon_of([(multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def accounting_multiplier(
    *, sigma: float, clip_norm: float, grid: float, dim: int, sites: int
) -> float:
    """Noise multiplier one distributed step is accounted with at t = 0: ``σ C / Δ``.

    A site records this (σ_acc, q, 1) in its ledger for every step it takes part in.

    Parameters
    ----------
    sigma : float
        σ: total noise std of the sum (all K shares), in units of C.
    clip_norm : float
        C: per-row gradient L2 bound.
    grid : float
        γ: grid step of the integer encoding (float units).
    dim : int
        d: number of model parameters.
    sites : int
        K: number of noise shares.

    Raises
    ------
    AccountingError
        If the sum of discrete Gaussians is not close enough to one (grid too coarse).
    """
    tau = sum_divergence(sigma=sigma, clip_norm=clip_norm, grid=grid, sites=sites)
    if tau * dim > TAU_LIMIT:
        raise AccountingError(
            f"the grid γ={grid:.3g} is too coarse for σ={sigma:.3g}, C={clip_norm:.3g} and "
            f"K={sites} (τd = {tau * dim:.2g}); use more grid bits"
        )
    return sigma * clip_norm / sensitivity(clip_norm=clip_norm, grid=grid, dim=dim)


def largest_tolerated_collusion(*, sites: int, threshold: int) -> int:
    """Most sites that may collude with the server: fewer than the secagg threshold, < K."""
    return max(0, min(threshold - 1, sites - 1))
