"""In-process noise placements for release families (no Flower, no ledgers).

A release family (:class:`shared.models.release.ReleaseFamily`) is fitted from
Gaussian releases of statistics, one per stage, stage ``s`` with L2 sensitivity
Δ_s and noise multiplier σ_s = σ/√ρ_s, where σ is the plain Gaussian mechanism's
noise multiplier for (ε, δ) (the project's accountant with q = 1 and one step:
what a site's ledger would record, once per stage). Every placement spends ε
per row:

* ``local``: each site releases its statistics with its own full noise (std σ_sΔ_s
  per coordinate); the server sees every site's noisy vector and sums them, so
  the sum carries √K times the central noise;
* ``distributed``: each site adds a discrete Gaussian share of variance
  (σ_sΔ_s)²/K to its integer statistics, and the shares are summed by secure
  aggregation (:func:`shared.distdp.step.secure_sum`, the protocol maths run in
  process): the server learns only the sum, which carries the central noise.
  As for distributed DP-SGD, the sum of K discrete Gaussians is close to, not
  exactly, one discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021);
* ``pooled``: the trusted curator, one release on the union of the rows
  (``epsilon=None``: the exact statistics, the no-DP baseline).
"""

from __future__ import annotations

import numpy as np

from shared.accounting import calibrate_noise
from shared.distdp.release import release_codec, release_grid_bits, release_share
from shared.distdp.step import secure_sum
from shared.errors import ConfigError
from shared.models.release import ReleaseFamily, stage_noise_multipliers


def release_sigma(*, epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """σ of one Gaussian release at (ε, δ): the accountant's ``(σ, q = 1, 1 step)``.

    A family's stages split it as σ_s = σ / √ρ_s (:func:`stage_noise_multipliers`).
    """
    return calibrate_noise(
        target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )


def _sigmas(family: ReleaseFamily, epsilon: float, delta: float) -> list[float]:
    return stage_noise_multipliers(
        release_sigma(epsilon=epsilon, delta=delta), family.release_shares()
    )


def local_total(
    family: ReleaseFamily,
    sites: list[np.ndarray],
    *,
    stage: int,
    noise_multiplier: float,
    seed: int,
) -> np.ndarray:
    """Sum of the sites' own Gaussian releases of ``stage`` (each with the full σ_sΔ_s)."""
    total = np.zeros(family.release_length(stage))
    for i, rows in enumerate(sites):
        rng = np.random.default_rng([seed, stage, i])
        total += family.local_release(rows, stage=stage, noise_multiplier=noise_multiplier, rng=rng)
    return total


def release_local(
    family: ReleaseFamily,
    sites: list[np.ndarray],
    *,
    epsilon: float | None,
    delta: float,
    seed: int,
) -> None:
    """Each site releases each stage with its own full noise; the server sums them.

    One site is the trusted curator (``pooled-dp``); ``epsilon=None`` fits from
    the exact statistics (no DP).
    """
    if epsilon is None:
        for stage in range(len(family.release_shares())):
            exact = sum(family.statistics(s, stage) for s in sites)
            family.fit_release(np.asarray(exact), stage=stage, noise_std=0.0)
        return
    for stage, sigma in enumerate(_sigmas(family, epsilon, delta)):
        total = local_total(family, sites, stage=stage, noise_multiplier=sigma, seed=seed)
        std = sigma * family.release_sensitivity(stage) * len(sites) ** 0.5
        family.fit_release(total, stage=stage, noise_std=std)


def distributed_total(
    family: ReleaseFamily,
    sites: list[np.ndarray],
    *,
    stage: int,
    noise_multiplier: float,
    seed: int,
    threshold: int | None = None,
) -> np.ndarray:
    """Securely summed statistics of ``stage``, with discrete Gaussian noise shares.

    The same shares as a Flower run's (:mod:`shared.distdp.release`): integer counts
    on the grid 2**-b, each share's noise of scale σ_sΔ_s/√K, the K together σ_sΔ_s.
    """
    k = len(sites)
    if k < 2:
        raise ConfigError("placement 'distributed' needs at least 2 sites; with one use 'pooled'")
    delta_l2, length = family.release_sensitivity(stage), family.release_length(stage)
    bits = release_grid_bits(
        noise_multiplier=noise_multiplier, sensitivity=delta_l2, noise_sites=k, length=length
    )
    codec = release_codec(bits)
    rng = np.random.default_rng([seed, stage])
    shares = {
        i: release_share(
            family.statistics(s, stage),
            noise_multiplier=noise_multiplier,
            sensitivity=delta_l2,
            noise_sites=k,
            grid_bits=bits,
            rng=rng,
        )
        for i, s in enumerate(sites, start=1)
    }
    return secure_sum(shares, codec=codec, threshold=threshold or k // 2 + 1, min_participants=k)


def release_distributed(
    family: ReleaseFamily, sites: list[np.ndarray], *, epsilon: float, delta: float, seed: int
) -> None:
    """Fit each stage from the secure sum of the sites' noise shares (central noise)."""
    for stage, sigma in enumerate(_sigmas(family, epsilon, delta)):
        total = distributed_total(family, sites, stage=stage, noise_multiplier=sigma, seed=seed)
        std = sigma * family.release_sensitivity(stage)
        family.fit_release(total, stage=stage, noise_std=std)


def fit_placement(
    family: ReleaseFamily,
    placement: str,
    sites: list[np.ndarray],
    *,
    epsilon: float | None,
    delta: float,
    seed: int,
) -> None:
    """Fit ``family`` under ``placement`` (``local``, ``distributed``, anything else: pooled).

    ``single-best``, ``pooled`` and ``pooled-dp`` pass the rows they pool as one site.
    """
    if placement == "local":
        release_local(family, sites, epsilon=epsilon, delta=delta, seed=seed)
    elif placement == "distributed":
        if epsilon is None:
            raise ConfigError("placement 'distributed' needs a finite ε; without DP use 'pooled'")
        release_distributed(family, sites, epsilon=epsilon, delta=delta, seed=seed)
    else:
        pooled = [np.concatenate(sites)]
        release_local(family, pooled, epsilon=epsilon, delta=delta, seed=seed)
