"""Release-family statistics as secure-aggregation shares (integers, discrete Gaussian).

A release family's statistics are integers (counts; ``dp-copula``'s pair sums are
sums of products of scores quantised to a public grid, of either sign), so scaling
them by ``1/γ`` with γ = 2**-b leaves them integers, and no rounding slack enters the
sensitivity (unlike a gradient sum, :mod:`shared.distdp.accounting`). A site
adds discrete Gaussian noise of scale σ_sΔ_s/(γ√K) to its scaled counts and
reduces them modulo ``2**48``; the server learns only the sum of the shares.

* ``K = 1`` (noise placement ``local`` under secure aggregation): every share
  carries the full noise σ_sΔ_s, so each site is protected by its own noise alone
  and the sum of n shares carries √n times the central noise.
* ``K = min sites`` (noise placement ``distributed``): each share carries
  variance (σ_sΔ_s)²/K and the K shares together the noise of one central
  release. The sum of K discrete Gaussians is close to, not exactly, one discrete
  Gaussian; the grid is refined until Kairouz, Liu & Steinke's divergence τ times
  the statistics' length is below :data:`shared.distdp.accounting.TAU_LIMIT`, and
  the release is then accounted as one Gaussian mechanism ``(σ_s, q = 1, 1 step)``.
  A discrete Gaussian with the continuous Gaussian's scale satisfies the same
  concentrated DP (Canonne, Kamath & Steinke, NeurIPS 2020), so ``K = 1`` is
  accounted the same way.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from shared.distdp.accounting import TAU_LIMIT, sum_divergence
from shared.distdp.encoding import IntVector, ModularCodec
from shared.distdp.step import site_share
from shared.errors import AccountingError, ModelError

log = logging.getLogger("fedsynth")

#: Finest grid tried, γ = 2**-MAX_GRID_BITS (counts up to MAX_ROWS still fit the ring).
MAX_GRID_BITS = 12
#: Public bound on the magnitude of one summed statistic (for counts: the rows behind
#: it); with MAX_GRID_BITS it leaves the 48-bit ring a factor of 8 of headroom.
MAX_ROWS = 2**31


def release_grid_bits(
    *, noise_multiplier: float, sensitivity: float, noise_sites: int, length: int
) -> int:
    """The smallest b with γ = 2**-b for which K discrete Gaussians sum to (nearly) one.

    Parameters
    ----------
    noise_multiplier : float
        σ_s: total noise std of the sum, in units of Δ_s.
    sensitivity : float
        Δ_s: L2 sensitivity of the counts (add/remove one row).
    noise_sites : int
        K: shares the noise is split over (1: each share has the full noise).
    length : int
        Number of counts.

    Raises
    ------
    AccountingError
        No grid up to 2**-MAX_GRID_BITS brings τ·length below the limit.
    """
    for bits in range(MAX_GRID_BITS + 1):
        tau = sum_divergence(
            sigma=noise_multiplier, clip_norm=sensitivity, grid=2.0**-bits, sites=noise_sites
        )
        if tau * length <= TAU_LIMIT:
            return bits
    raise AccountingError(
        f"σ_s = {noise_multiplier:.3g} with Δ_s = {sensitivity:.3g} is too little noise to split "
        f"over K = {noise_sites} discrete Gaussian shares; lower ε, or use noise placement 'local'"
    )


def release_codec(grid_bits: int) -> ModularCodec:
    """The ring of a release share: γ = 2**-b, sums modulo 2**48, headroom for MAX_ROWS."""
    if not 0 <= grid_bits <= MAX_GRID_BITS:
        raise AccountingError(f"release grid bits must be in 0..{MAX_GRID_BITS}, got {grid_bits}")
    codec = ModularCodec(grid=2.0**-grid_bits)
    codec.check_headroom(bound=float(MAX_ROWS))
    return codec


def release_share(
    stats: np.ndarray,
    *,
    noise_multiplier: float,
    sensitivity: float,
    noise_sites: int,
    grid_bits: int,
    rng: np.random.Generator,
) -> IntVector:
    """One site's ring share: counts/γ + N_ℤ(0, (σ_sΔ_s)²/(Kγ²)) mod 2**48.

    Parameters
    ----------
    stats : numpy.ndarray
        The site's exact statistics of one stage (integers, e.g. counts).
    noise_multiplier : float
        σ_s: noise std of the sum of all K shares, in units of Δ_s.
    sensitivity : float
        Δ_s: the counts' L2 sensitivity.
    noise_sites : int
        K: the share carries 1/K of the noise variance.
    grid_bits : int
        b: the grid γ = 2**-b (:func:`release_grid_bits`).
    rng : numpy.random.Generator
        Source of the noise (secret at a real site).

    Each statistic is clamped to ±:data:`MAX_ROWS` first, so the ring cannot wrap.
    Clamping each coordinate never moves two vectors further apart, so the
    sensitivity still holds; refusing instead would tell the coordinator, without
    noise, that some statistic of the site's rows is that large.

    Raises
    ------
    ModelError
        The statistics are not integers (the exact encoding needs them; this depends
        on the family's code, never on the rows).
    """
    x = np.asarray(stats, dtype=np.float64)
    if not (np.isfinite(x).all() and (x == np.round(x)).all()):
        raise ModelError(
            "release shares need statistics that are integers; this family's are not, so "
            "it cannot be fitted under secure aggregation"
        )
    if x.size and np.abs(x).max() > MAX_ROWS:
        log.warning(
            "a release statistic's magnitude exceeds %d (the share ring's headroom) and is "
            "clamped to it; this site's table is too large for an exact secure sum, so "
            "fit without secure aggregation to avoid the bias",
            MAX_ROWS,
        )
        x = np.clip(x, -MAX_ROWS, MAX_ROWS)
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0 and noise_sites >= 1):
        raise ValueError(f"need σ_s > 0 and K ≥ 1, got {noise_multiplier} and {noise_sites}")
    return site_share(
        torch.from_numpy(x),
        sigma=noise_multiplier,
        clip_norm=sensitivity,
        noise_sites=noise_sites,
        codec=release_codec(grid_bits),
        rng=rng,
    )
