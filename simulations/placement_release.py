"""In-process noise placements for release families (no Flower, no ledgers).

A release family (:class:`shared.models.release.ReleaseFamily`) is fitted from
one Gaussian release of statistics with L2 sensitivity Δ; σ is the plain
Gaussian mechanism's noise multiplier for (ε, δ) (the project's accountant with
q = 1 and one step: what a site's ledger would record). Every placement spends
ε per row:

* ``local``: each site releases its statistics with its own full noise (std σΔ
  per coordinate); the server sees every site's noisy vector and sums them, so
  the sum carries √K times the central noise;
* ``distributed``: each site adds a discrete Gaussian share of variance
  (σΔ)²/K to its integer statistics, and the shares are summed by secure
  aggregation (:func:`shared.distdp.step.secure_sum`, the protocol maths run in
  process): the server learns only the sum, which carries the central noise.
  As for distributed DP-SGD, the sum of K discrete Gaussians is close to, not
  exactly, one discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021);
* ``pooled``: the trusted curator, one release on the union of the rows
  (``epsilon=None``: the exact statistics, the no-DP baseline).
"""

from __future__ import annotations

import numpy as np
import torch

from shared.accounting import calibrate_noise
from shared.distdp.encoding import ModularCodec
from shared.distdp.step import secure_sum, site_share
from shared.errors import ConfigError
from shared.models.release import ReleaseFamily


def release_sigma(*, epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """σ of one Gaussian release at (ε, δ): the accountant's ``(σ, q = 1, 1 step)``."""
    return calibrate_noise(
        target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
    )


def release_pooled(
    family: ReleaseFamily, data: np.ndarray, *, epsilon: float | None, delta: float, seed: int
) -> None:
    """Trusted curator: one release on all rows at ε (None: exact statistics, no DP)."""
    if epsilon is None:
        family.fit_release(family.statistics(data), noise_std=0.0)
        return
    sigma = release_sigma(epsilon=epsilon, delta=delta)
    noisy = family.local_release(data, noise_multiplier=sigma, rng=np.random.default_rng(seed))
    family.fit_release(noisy, noise_std=sigma * family.release_sensitivity())


def release_local(
    family: ReleaseFamily,
    sites: list[np.ndarray],
    *,
    epsilon: float | None,
    delta: float,
    seed: int,
) -> None:
    """Each site releases with its own full noise; the server sums the noisy vectors."""
    if epsilon is None:
        family.fit_release(sum(family.statistics(s) for s in sites), noise_std=0.0)
        return
    sigma = release_sigma(epsilon=epsilon, delta=delta)
    total = np.zeros(family.release_length())
    for i, rows in enumerate(sites):
        rng = np.random.default_rng([seed, i])
        total += family.local_release(rows, noise_multiplier=sigma, rng=rng)
    family.fit_release(total, noise_std=sigma * family.release_sensitivity() * len(sites) ** 0.5)


def distributed_total(
    family: ReleaseFamily,
    sites: list[np.ndarray],
    *,
    epsilon: float,
    delta: float,
    seed: int,
    threshold: int | None = None,
) -> np.ndarray:
    """The securely summed statistics with discrete Gaussian shares of the central noise.

    Statistics are integer counts, so the grid step is 1 and rounding is exact;
    each share's noise has scale σΔ/√K, the K shares together σΔ.
    """
    k = len(sites)
    if k < 2:
        raise ConfigError("placement 'distributed' needs at least 2 sites; with one use 'pooled'")
    sigma = release_sigma(epsilon=epsilon, delta=delta)
    delta_l2 = family.release_sensitivity()
    codec = ModularCodec(grid=1.0)
    rows = sum(len(s) for s in sites)
    codec.check_headroom(bound=float(rows + 20 * sigma * delta_l2))
    rng = np.random.default_rng(seed)
    shares = {
        i: site_share(
            torch.from_numpy(family.statistics(s)),
            sigma=sigma,
            clip_norm=delta_l2,
            noise_sites=k,
            codec=codec,
            rng=rng,
        )
        for i, s in enumerate(sites, start=1)
    }
    return secure_sum(shares, codec=codec, threshold=threshold or k // 2 + 1, min_participants=k)


def release_distributed(
    family: ReleaseFamily, sites: list[np.ndarray], *, epsilon: float, delta: float, seed: int
) -> None:
    """Fit from the secure sum of the sites' noise shares (central noise σΔ)."""
    total = distributed_total(family, sites, epsilon=epsilon, delta=delta, seed=seed)
    sigma = release_sigma(epsilon=epsilon, delta=delta)
    family.fit_release(total, noise_std=sigma * family.release_sensitivity())


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
        release_pooled(family, np.concatenate(sites), epsilon=epsilon, delta=delta, seed=seed)
