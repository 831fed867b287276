"""Release families: generators fitted from one noisy release instead of DP-SGD.

A :class:`ReleaseFamily` has no trained weights. Each site computes a vector of
sufficient statistics of its rows (:meth:`ReleaseFamily.statistics`, e.g.
contingency tables) whose L2 sensitivity under add/remove of one row is
:meth:`ReleaseFamily.release_sensitivity`, and releases it once through the
Gaussian mechanism (:meth:`ReleaseFamily.local_release`: noise std σ·Δ per
coordinate, accounted as ``(σ, q = 1, 1 step)``). The server sums the sites'
vectors and fits the model from the sum (:meth:`ReleaseFamily.fit_release`),
which is post-processing. The fitted model lives in buffers of
:attr:`GeneratorFamily.module`, so it is saved, loaded and checked as a
``state_dict`` like every family, and sampled through the base class's template
(:meth:`GeneratorFamily.sample`: constraints, conditions, rebalancing).

The DP-SGD hooks (:meth:`private_module`, :meth:`criterion`) refuse with a
:class:`ConfigError`, so a DP-SGD loop handed a release family stops at once.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
from torch import nn

from shared.errors import ConfigError
from shared.models.base import GeneratorFamily


class ReleaseFamily(GeneratorFamily):
    """Base class of families fitted from a summed Gaussian release of statistics."""

    # Discretises numerics on the public bounds itself; a quantile encoder has no role.
    supports_numeric_encoder = False

    def _no_dp_sgd(self) -> ConfigError:
        return ConfigError(
            f"generator {self.name!r} is fitted from one noisy release of statistics, not "
            "trained with DP-SGD, so it has no private module or loss; use its "
            "local_release / fit_release, or a DP-SGD family such as 'dp-vae'"
        )

    def private_module(self) -> nn.Module:
        """Refused: a release family has no DP-SGD-trained part."""
        raise self._no_dp_sgd()

    def criterion(self) -> nn.Module:
        """Refused: a release family has no per-row loss."""
        raise self._no_dp_sgd()

    @abstractmethod
    def release_length(self) -> int:
        """Length of the statistics vector (public: a function of the schema and settings)."""

    @abstractmethod
    def release_sensitivity(self) -> float:
        """Δ: L2 change of :meth:`statistics` when one row is added or removed."""

    @abstractmethod
    def statistics(self, rows: np.ndarray) -> np.ndarray:
        """Exact statistics of encoded ``rows`` (never sent as they are)."""

    @abstractmethod
    def fit_release(self, total: np.ndarray, *, noise_std: float) -> None:
        """Fit the model from summed (noisy) statistics; post-processing only.

        Parameters
        ----------
        total : numpy.ndarray
            The sum over sites of their released vectors.
        noise_std : float
            Public std of the noise on each coordinate of ``total`` (0: exact).
        """

    def local_release(
        self, rows: np.ndarray, *, noise_multiplier: float, rng: np.random.Generator
    ) -> np.ndarray:
        """One Gaussian release of the statistics: std σ·Δ per coordinate.

        Parameters
        ----------
        rows : numpy.ndarray
            The site's encoded rows.
        noise_multiplier : float
            σ, noise std in units of the L2 sensitivity Δ; accounted as
            ``(σ, q = 1, 1 step)``.
        rng : numpy.random.Generator
            Source of the noise (secret at a real site).
        """
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"noise multiplier σ must be positive, got {noise_multiplier}")
        stats = self.statistics(rows)
        return stats + rng.normal(0.0, noise_multiplier * self.release_sensitivity(), stats.shape)
