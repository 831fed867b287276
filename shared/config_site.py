"""What the server sends a site each round or step (:class:`TrainSettings`, one DP-SGD step)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config_model import ModelSettings
from shared.config_read import Scalar, positive, read_accountant, read_value

#: Rows a site is assumed to hold when the consortium announced none: with q it sets
#: the public divisor of the DP-SGD step (:attr:`TrainSettings.expected_batch`).
NOMINAL_SITE_ROWS = 1_000


@dataclass(frozen=True)
class TrainSettings:
    """What one round asks of a site. Every field is public.

    Attributes
    ----------
    noise_multiplier : float
        σ, Gaussian noise std in units of the clip norm C.
    sample_rate : float
        q, Poisson sampling rate of rows per step.
    max_grad_norm : float
        C, L2 bound on each row's gradient.
    update_clip_norm : float
        L2 bound on the whole model update a site sends.
    expected_batch : float
        The public divisor of each DP-SGD step's noisy gradient sum (in rows):
        q × the consortium's announced rows per site (:attr:`shared.config.RunSettings.
        expected_batch`). A site never divides by its own q·n, because n is private and
        dividing by it is not post-processing of the noisy sum.
    """

    server_round: int
    local_steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    learning_rate: float
    update_clip_norm: float
    seed: int
    schema_fingerprint: str
    expected_batch: float
    accountant: str = "rdp"
    model: ModelSettings = field(default_factory=ModelSettings)
    #: μ of the FedProx term μ/2‖w − w_global‖² (0: none); see :mod:`client.steppers`.
    proximal_mu: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainSettings:
        """Parse the ``train-config`` record a site receives."""
        return cls(
            server_round=read_value(config, "server-round", int, None, lambda v: v >= 1, ">= 1"),
            local_steps=read_value(
                config, "local-steps", int, None, lambda v: 1 <= v <= 100_000, "1..100000"
            ),
            noise_multiplier=read_value(config, "noise-multiplier", float, None, positive, "> 0"),
            sample_rate=read_value(
                config, "sample-rate", float, None, lambda v: 0 < v <= 1, "in (0, 1]"
            ),
            max_grad_norm=read_value(config, "max-grad-norm", float, None, positive, "> 0"),
            learning_rate=read_value(config, "learning-rate", float, None, positive, "> 0"),
            update_clip_norm=read_value(config, "update-clip-norm", float, None, positive, "> 0"),
            seed=read_value(config, "seed", int, 0),
            schema_fingerprint=read_value(config, "schema-fingerprint", str, None),
            accountant=read_accountant(config),
            model=ModelSettings.from_config(config),
            proximal_mu=read_value(config, "proximal-mu", float, 0.0, lambda v: v >= 0, ">= 0"),
            expected_batch=read_value(config, "expected-batch", float, None, positive, "> 0"),
        )

    def to_config(self) -> dict[str, Scalar]:
        """Flat Flower config form (round trip of :meth:`from_config`)."""
        return {
            "server-round": self.server_round,
            "local-steps": self.local_steps,
            "noise-multiplier": self.noise_multiplier,
            "sample-rate": self.sample_rate,
            "max-grad-norm": self.max_grad_norm,
            "learning-rate": self.learning_rate,
            "update-clip-norm": self.update_clip_norm,
            "seed": self.seed,
            "schema-fingerprint": self.schema_fingerprint,
            "accountant": self.accountant,
            **self.model.to_config(),
            "proximal-mu": self.proximal_mu,
            "expected-batch": self.expected_batch,
        }


@dataclass(frozen=True)
class DistributedStepSettings:
    """What one distributed DP-SGD step asks of a site (sent server → site). All public.

    Attributes
    ----------
    train : TrainSettings
        The round's settings; ``noise_multiplier`` is the *total* σ (units of C) of
        the sum over all K shares, ``local_steps`` the steps of this round.
    step : int
        Global index of the step in the run (1-based).
    noise_sites : int
        K: the noise is split into K shares; each site adds variance σ²C²/K.
    grid_bits : int
        Grid step γ = C · 2**-grid_bits of the integer encoding.
    modulus_bits : int
        Sums are taken modulo ``2**modulus_bits``.
    """

    train: TrainSettings
    step: int
    noise_sites: int
    grid_bits: int
    modulus_bits: int

    @property
    def grid(self) -> float:
        """γ: float value of one integer unit."""
        return self.train.max_grad_norm * 2.0**-self.grid_bits

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DistributedStepSettings:
        """Parse the ``train-config`` record of a distributed step."""
        return cls(
            train=TrainSettings.from_config(config),
            step=read_value(config, "step", int, None, lambda v: v >= 1, ">= 1"),
            noise_sites=read_value(config, "noise-sites", int, None, lambda v: v >= 2, ">= 2"),
            grid_bits=read_value(config, "grid-bits", int, None, lambda v: 4 <= v <= 30, "4..30"),
            modulus_bits=read_value(
                config, "modulus-bits", int, None, lambda v: 8 <= v <= 48, "8..48"
            ),
        )

    def to_config(self) -> dict[str, Scalar]:
        """Flat Flower config form (round trip of :meth:`from_config`)."""
        return {
            **self.train.to_config(),
            "step": self.step,
            "noise-sites": self.noise_sites,
            "grid-bits": self.grid_bits,
            "modulus-bits": self.modulus_bits,
        }
