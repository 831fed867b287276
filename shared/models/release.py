"""Release families: generators fitted from noisy releases of statistics, not DP-SGD.

A :class:`ReleaseFamily` has no trained weights. It is fitted in a fixed, public
number of *stages*. In stage ``s`` each site computes a vector of statistics of
its rows (:meth:`ReleaseFamily.statistics`, e.g. contingency tables) whose L2
sensitivity under add/remove of one row is
:meth:`ReleaseFamily.release_sensitivity`, and releases it once through the
Gaussian mechanism (:meth:`ReleaseFamily.local_release`: noise std σ_s·Δ_s per
coordinate, accounted as ``(σ_s, q = 1, 1 step)``). The server sums the sites'
vectors and fits from the sum (:meth:`ReleaseFamily.fit_release`), which is
post-processing; what stage ``s + 1`` measures may depend on that fit (public).

Budget split. Stage ``s`` gets the share ρ_s of :meth:`release_shares` (Σ ρ_s = 1)
through σ_s = σ / √ρ_s (:func:`stage_noise_multipliers`). Under RDP (and zCDP)
Gaussian mechanisms compose by adding 1/σ_s², so the stages together spend
exactly what one release at σ would: the (ε, δ) that σ was calibrated to.

The fitted model lives in buffers of :attr:`GeneratorFamily.module`, so it is
saved, loaded and checked as a ``state_dict`` like every family, and sampled
through the base class's template (constraints, conditions, rebalancing). The
DP-SGD hooks (:meth:`private_module`, :meth:`criterion`) refuse with a
:class:`ConfigError`, so a DP-SGD loop handed a release family stops at once.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from shared.config import RunSettings
from shared.errors import ConfigError, ModelError
from shared.models.base import GeneratorFamily


def stage_noise_multipliers(sigma: float, shares: tuple[float, ...]) -> list[float]:
    """σ_s = σ / √ρ_s: stages whose composition equals one Gaussian release at σ.

    Parameters
    ----------
    sigma : float
        σ of one Gaussian release at the target (ε, δ), in units of the sensitivity.
    shares : tuple of float
        ρ_s per stage, positive, summing to 1.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"noise multiplier σ must be positive, got {sigma}")
    if not shares or min(shares) <= 0 or abs(sum(shares) - 1.0) > 1e-9:
        raise ValueError(f"budget shares must be positive and sum to 1, got {shares}")
    return [sigma / math.sqrt(rho) for rho in shares]


def add_release_noise(
    stats: np.ndarray, *, noise_multiplier: float, sensitivity: float, rng: np.random.Generator
) -> np.ndarray:
    """``stats`` plus N(0, (σ_s Δ_s)²) per coordinate: one Gaussian mechanism.

    Parameters
    ----------
    stats : numpy.ndarray
        Exact statistics of one stage.
    noise_multiplier : float
        σ_s, the noise std in units of the L2 sensitivity.
    sensitivity : float
        Δ_s, the statistics' L2 change when one row is added or removed.
    rng : numpy.random.Generator
        Source of the noise (secret at a real site).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier σ must be positive, got {noise_multiplier}")
    stats = np.asarray(stats, dtype=np.float64)
    return stats + rng.normal(0.0, noise_multiplier * sensitivity, stats.shape)


class ReleaseFamily(GeneratorFamily):
    """Base class of families fitted from summed Gaussian releases of statistics."""

    # Discretises numerics on the public bounds itself; a quantile encoder has no role.
    supports_numeric_encoder = False

    def _no_dp_sgd(self) -> ConfigError:
        return ConfigError(
            f"generator {self.name!r} is fitted from noisy releases of statistics, not "
            "trained with DP-SGD, so it has no private module or loss; use its "
            "local_release / fit_release, or a DP-SGD family such as 'dp-vae'"
        )

    def require_pairs(self) -> None:
        """Refuse a one-column schema: release families model pairs of columns.

        Raises
        ------
        ConfigError
            If the schema has fewer than two columns.
        """
        if len(self.schema.columns) < 2:
            raise ConfigError(
                f"generator {self.name!r} models pairs of columns; schema {self.schema.name!r} "
                "has one column. Use a schema with at least two columns, or 'dp-vae'."
            )

    def check_stage(self, stage: int) -> int:
        """``stage`` itself, if it is one of this family's stages.

        Raises
        ------
        ModelError
            If ``stage`` is not in ``0 .. len(release_shares()) - 1``.
        """
        count = len(self.release_shares())
        if not 0 <= stage < count:
            names = ", ".join(str(s) for s in range(count - 1)) + f" and {count - 1}"
            raise ModelError(f"{self.name} has release stages {names}, not {stage}")
        return stage

    def checked_release(self, total: np.ndarray, stage: int) -> np.ndarray:
        """``total`` as floats, if it has stage ``stage``'s length.

        Raises
        ------
        ModelError
            If its shape is not ``(release_length(stage),)``: the sites and the server
            disagree on the schema, the settings, or the fit the stage follows.
        """
        out = np.asarray(total, dtype=np.float64)
        if out.shape != (self.release_length(stage),):
            raise ModelError(
                f"stage {stage} release has shape {out.shape}, expected "
                f"({self.release_length(stage)},) for schema {self.schema.name!r} with "
                f"marginal-bins {self.settings.marginal_bins}; every site must use the same "
                "schema and settings, and each stage must follow the previous stage's fit"
            )
        return out

    @staticmethod
    def sampling_rng(generator: torch.Generator) -> np.random.Generator:
        """A numpy generator seeded from ``generator``, so seeded sampling repeats."""
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))

    def private_module(self) -> nn.Module:
        """Refused: a release family has no DP-SGD-trained part."""
        raise self._no_dp_sgd()

    def criterion(self) -> nn.Module:
        """Refused: a release family has no per-row loss."""
        raise self._no_dp_sgd()

    @classmethod
    @abstractmethod
    def release_shares(cls) -> tuple[float, ...]:
        """ρ_s: each stage's share of the budget (public and fixed: positive, sums to 1)."""

    @abstractmethod
    def release_length(self, stage: int) -> int:
        """Length of stage ``stage``'s statistics (public: schema, settings, earlier fits)."""

    @abstractmethod
    def release_sensitivity(self, stage: int) -> float:
        """Δ_s: L2 change of stage ``stage``'s statistics when one row is added or removed."""

    @abstractmethod
    def statistics(self, rows: np.ndarray, stage: int) -> np.ndarray:
        """Exact statistics of encoded ``rows`` for ``stage`` (never sent as they are)."""

    @abstractmethod
    def fit_release(self, total: np.ndarray, *, stage: int, noise_std: float) -> None:
        """Fit from stage ``stage``'s summed (noisy) statistics; post-processing only.

        Parameters
        ----------
        total : numpy.ndarray
            The sum over sites of their released vectors.
        stage : int
            Stages are fitted in order 0, 1, ….
        noise_std : float
            Public std of the noise on each coordinate of ``total`` (0: exact).
        """

    def local_release(
        self,
        rows: np.ndarray,
        *,
        stage: int,
        noise_multiplier: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """One Gaussian release of stage ``stage``'s statistics: std σ_s·Δ_s per coordinate.

        Parameters
        ----------
        rows : numpy.ndarray
            The site's encoded rows.
        stage : int
            Which statistics.
        noise_multiplier : float
            σ_s, noise std in units of the L2 sensitivity Δ_s; accounted as
            ``(σ_s, q = 1, 1 step)``.
        rng : numpy.random.Generator
            Source of the noise (secret at a real site).
        """
        return add_release_noise(
            self.statistics(rows, stage),
            noise_multiplier=noise_multiplier,
            sensitivity=self.release_sensitivity(stage),
            rng=rng,
        )


def release_stage_noise(settings: RunSettings) -> list[float]:
    """σ_s of each stage of the run's release family: together they spend ε per site.

    Parameters
    ----------
    settings : RunSettings
        A run whose generator is a release family (ε, δ, accountant).
    """
    from shared.models.base import _REGISTRY

    cls = _REGISTRY.get(settings.model.generator)
    if cls is None or not issubclass(cls, ReleaseFamily):
        raise ConfigError(f"generator {settings.model.generator!r} is not a release family")
    return stage_noise_multipliers(settings.release_noise_multiplier(), cls.release_shares())
