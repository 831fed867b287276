"""Fixed-point encoding of bounded float vectors for summation modulo ``2**k``.

Each coordinate ``x`` is clipped to ``[-clip, clip]`` and mapped to an integer
level in ``[0, 2**bits - 1]`` by *stochastic rounding* (unbiased: the expected
decoded value equals the clipped input). The sum of ``n`` encoded vectors lies
in ``[0, n (2**bits - 1)]``; the modulus ``2**k`` is chosen so this range never
wraps, and :meth:`FixedPointCodec.decode_sum` refuses a count that could.

Error bound: one site's decoded value differs from its clipped input by less
than one level, ``step = 2 clip / (2**bits - 1)``; a sum of ``n`` sites by less
than ``n * step``, and their mean by less than ``step`` per coordinate.

A site's L2-clipped model update (norm ≤ C) has every coordinate in ``[-C, C]``,
so ``clip = update_clip_norm`` loses nothing to clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.secagg.errors import QuantisationOverflowError

FloatVector = npt.NDArray[np.float64]
IntVector = npt.NDArray[np.uint64]
MAX_MODULUS_BITS = 62  # uint64 arithmetic with headroom; masks are drawn below 2**k


@dataclass(frozen=True)
class FixedPointCodec:
    """Encoding of floats in ``[-clip, clip]`` to ``bits``-bit levels, summed mod ``2**k``.

    Parameters
    ----------
    clip : float
        Bound on the absolute value of each coordinate (same units as the vector).
    bits : int
        Quantisation levels ``2**bits`` per coordinate.
    max_sites : int
        Most vectors that will ever be summed; fixes the modulus ``2**k``.
    """

    clip: float
    bits: int
    max_sites: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite positive number, got {self.clip!r}")
        if not 2 <= self.bits <= 48:
            raise ValueError(f"bits must be in 2..48, got {self.bits}; 24 is a good default")
        if self.max_sites < 1:
            raise ValueError(f"max_sites must be >= 1, got {self.max_sites}")
        if self.modulus_bits > MAX_MODULUS_BITS:
            raise QuantisationOverflowError(
                f"{self.bits} bits for {self.max_sites} sites needs a modulus of "
                f"2**{self.modulus_bits}, above 2**{MAX_MODULUS_BITS}; lower the bits"
            )

    @property
    def levels(self) -> int:
        """Highest level ``2**bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def modulus_bits(self) -> int:
        """``k``: smallest with ``max_sites * levels < 2**k`` (so the sum cannot wrap)."""
        return max(1, (self.max_sites * self.levels).bit_length())

    @property
    def modulus_mask(self) -> int:
        """``2**k - 1``: reduction modulo ``2**k`` is a bitwise AND with it."""
        return (1 << self.modulus_bits) - 1

    @property
    def step(self) -> float:
        """Width of one quantisation level (the per-site error bound per coordinate)."""
        return 2.0 * self.clip / self.levels

    def encode(self, x: FloatVector, rng: np.random.Generator) -> IntVector:
        """Clip, scale and stochastically round ``x`` to levels in ``[0, 2**bits - 1]``.

        Raises
        ------
        ValueError
            If ``x`` holds NaN or infinity.
        """
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode a vector with NaN or infinite values")
        scaled = (np.clip(x, -self.clip, self.clip) + self.clip) / self.step
        low = np.floor(scaled)
        up = rng.random(x.shape) < (scaled - low)
        out: IntVector = np.minimum(low + up, self.levels).astype(np.uint64)
        return out

    def to_wire(self, v: IntVector) -> npt.NDArray[np.unsignedinteger[Any]]:
        """``v`` in the narrowest unsigned dtype that holds ``2**k`` (uint32 when k <= 32)."""
        return v.astype(np.uint32) if self.modulus_bits <= 32 else v

    def add(self, a: IntVector, b: IntVector) -> IntVector:
        """``(a + b) mod 2**k`` elementwise."""
        return (a + b) & np.uint64(self.modulus_mask)

    def sub(self, a: IntVector, b: IntVector) -> IntVector:
        """``(a - b) mod 2**k`` elementwise."""
        return (a - b) & np.uint64(self.modulus_mask)

    def decode_sum(self, total: IntVector, count: int) -> FloatVector:
        """Float sum of ``count`` encoded vectors from their sum modulo ``2**k``.

        Raises
        ------
        QuantisationOverflowError
            If ``count`` vectors could have wrapped the modulus.
        """
        if not 1 <= count <= self.max_sites:
            raise QuantisationOverflowError(
                f"decoding a sum of {count} vectors, but the modulus 2**{self.modulus_bits} "
                f"only holds sums of up to {self.max_sites}; rebuild the codec with "
                "max_sites >= the number of sites"
            )
        return total.astype(np.float64) * self.step - count * self.clip
