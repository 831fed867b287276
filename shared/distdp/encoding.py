"""Integer encoding of noisy gradient sums for secure aggregation, with modular wrap.

A site scales its clipped gradient sum by ``1/γ`` (γ: the grid step), rounds it
stochastically (unbiased) to integers, adds discrete Gaussian noise on the
integers, and reduces modulo ``2**k``. Sums modulo ``2**k`` of such vectors decode
to the true integer sum as long as it lies in ``[-2**(k-1), 2**(k-1))``.

Unlike :class:`shared.secagg.FixedPointCodec` nothing is clipped after the noise:
clipping a site's noisy vector would make the server's view depend on that site's
noise share alone, whereas wrap-around modulo ``2**k`` commutes with the sum and is
therefore post-processing of the (private) aggregate.

Discrete Gaussian sampling follows Canonne, Kamath & Steinke, "The Discrete
Gaussian for Differential Privacy" (NeurIPS 2020), Algorithm 3 (rejection from a
discrete Laplace), in floating point with numpy's generator: adequate for
simulation and research runs; a deployment would use exact arithmetic and a
cryptographic source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.secagg import FixedPointCodec
from shared.secagg.errors import QuantisationOverflowError

FloatVector = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.uint64]
SignedVector = npt.NDArray[np.int64]
RING_BITS = 48  # the largest modulus FixedPointCodec's ring arithmetic offers


def discrete_gaussian(scale: float, size: int, rng: np.random.Generator) -> SignedVector:
    """``size`` draws of the discrete Gaussian on ℤ with parameter ``scale`` (≈ std).

    ``P(x) ∝ exp(-x² / (2 scale²))``; rejection sampling from the discrete Laplace
    with parameter ``t = ⌊scale⌋ + 1`` (Canonne, Kamath & Steinke 2020, Alg. 3).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"discrete Gaussian scale must be positive, got {scale}")
    t = math.floor(scale) + 1
    p = -math.expm1(-1.0 / t)  # success probability of the geometric laws
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        n = todo.size
        # Difference of two geometric variables: discrete Laplace with parameter t.
        y = rng.geometric(p, n).astype(np.int64) - rng.geometric(p, n).astype(np.int64)
        accept = rng.random(n) < np.exp(-((np.abs(y) - scale**2 / t) ** 2) / (2 * scale**2))
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


@dataclass(frozen=True)
class ModularCodec:
    """Grid step γ and modulus ``2**k`` of one distributed DP-SGD step.

    Parameters
    ----------
    grid : float
        γ, the float value of one integer unit (same units as the gradient).
    modulus_bits : int
        k: sums are taken modulo ``2**k`` (at most 48).
    """

    grid: float
    modulus_bits: int = RING_BITS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.grid) and self.grid > 0):
            raise ValueError(f"grid step γ must be a finite positive number, got {self.grid}")
        if not 8 <= self.modulus_bits <= RING_BITS:
            raise ValueError(f"modulus bits must be in 8..{RING_BITS}, got {self.modulus_bits}")

    @property
    def ring(self) -> FixedPointCodec:
        """The secure aggregation arithmetic modulo ``2**k`` (masks, sums)."""
        # bits=k, one "site" gives exactly the modulus 2**k; clip is unused here.
        return FixedPointCodec(clip=1.0, bits=self.modulus_bits, max_sites=1)

    @property
    def half_range(self) -> int:
        """``2**(k-1)``: decoded sums must lie strictly inside ``±`` this."""
        return 1 << (self.modulus_bits - 1)

    def check_headroom(self, *, bound: float) -> None:
        """Refuse a configuration whose sums could reach ``bound`` (float units) and wrap.

        Raises
        ------
        QuantisationOverflowError
            If ``bound / γ`` is not below a quarter of the modulus.
        """
        if bound / self.grid >= self.half_range / 2:
            raise QuantisationOverflowError(
                f"sums up to {bound:.3g} on a grid of {self.grid:.3g} need more than "
                f"2**{self.modulus_bits - 2} levels; use a coarser grid (fewer grid bits)"
            )

    def to_integers(self, x: FloatVector, rng: np.random.Generator) -> SignedVector:
        """Stochastic rounding of ``x / γ`` to integers (unbiased; error below 1 unit)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode a vector with NaN or infinite values")
        scaled = x / self.grid
        low = np.floor(scaled)
        return (low + (rng.random(x.shape) < scaled - low)).astype(np.int64)

    def wrap(self, v: SignedVector) -> IntVector:
        """``v mod 2**k`` as ring elements."""
        return (v.astype(np.int64).view(np.uint64) & np.uint64(self.ring.modulus_mask)).astype(
            np.uint64
        )

    def decode(self, total: IntVector) -> FloatVector:
        """Float value of a ring sum, read as a centred integer in ``[-2**(k-1), 2**(k-1))``.

        Raises
        ------
        QuantisationOverflowError
            If a coordinate sits in the outer quarter of the range: the sum may have wrapped.
        """
        m = np.int64(1 << self.modulus_bits)
        signed = total.astype(np.int64)
        signed = np.where(signed >= self.half_range, signed - m, signed)
        if np.any(np.abs(signed) >= self.half_range // 2 * 3 // 2):
            raise QuantisationOverflowError(
                "a decoded coordinate lies near the wrap-around point of 2**k, so the sum may "
                "have wrapped; use a coarser grid (fewer grid bits) or a smaller batch"
            )
        return signed.astype(np.float64) * self.grid
