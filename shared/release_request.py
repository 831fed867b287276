"""What the coordinator asks of a site in one stage of a release family's fit.

A release family (:class:`shared.models.release.ReleaseFamily`, e.g. ``dp-marginal``)
is fitted from one Gaussian release of statistics per stage instead of DP-SGD
rounds. The request names everything the site is charged for before it computes
anything: the stage, σ_s, and the stage's L2 sensitivity Δ_s and length as the
server computed them from the public schema and the fit so far. The site
recomputes Δ_s and the length from its own copy of the model and refuses a
mismatch, so a site is never charged for a mechanism other than the one announced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.config_model import ModelSettings
from shared.config_read import positive, read_accountant, read_value
from shared.errors import ConfigError


@dataclass(frozen=True)
class ReleaseRequest:
    """One stage's request. Every field is public.

    Attributes
    ----------
    stage : int
        Which statistics (0, 1, … in the family's order).
    noise_multiplier : float
        σ_s, the noise std in units of the sensitivity Δ_s.
    sensitivity : float
        Δ_s, the statistics' L2 change when one row is added or removed.
    length : int
        Number of coordinates of the statistics.
    ledger_round : int
        The round number the release is recorded under in the site's ledger (stage + 1).
    schema_fingerprint : str
        The consortium schema's fingerprint.
    model : ModelSettings
        The run's generator settings, to rebuild the model at the site.
    accountant : str
        The privacy accountant the site's ledger composes with.
    noise_sites : int
        K. 1: the site adds the full noise σ_sΔ_s. Above 1 (noise placement
        ``distributed``, only under secure aggregation) the site's share carries
        variance (σ_sΔ_s)²/K, and only the sum of K shares carries σ_sΔ_s.
    grid_bits : int
        b: a secure share encodes the counts on the grid γ = 2**-b
        (:func:`shared.distdp.release.release_grid_bits`); 0 for a plain release.
    """

    stage: int
    noise_multiplier: float
    sensitivity: float
    length: int
    ledger_round: int
    schema_fingerprint: str
    model: ModelSettings
    accountant: str = "rdp"
    noise_sites: int = 1
    grid_bits: int = 0

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "sensitivity"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"release request {name} must be positive, got {value!r}")
        if self.noise_sites < 1 or not 0 <= self.grid_bits <= 16:
            raise ConfigError(
                f"release request needs noise-sites >= 1 and grid-bits in 0..16, got "
                f"{self.noise_sites} and {self.grid_bits}"
            )

    @property
    def share_std(self) -> float:
        """Noise std of one site's vector: σ_sΔ_s/√K (σ_sΔ_s when K = 1)."""
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.noise_sites)

    def sum_std(self, senders: int) -> float:
        """Noise std of the sum of ``senders`` sites' vectors: σ_sΔ_s·√(n/K)."""
        return self.share_std * math.sqrt(senders)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReleaseRequest:
        """Parse the ``release-config`` record a site receives."""
        return cls(
            stage=read_value(config, "stage", int, None, lambda v: 0 <= v <= 16, "0..16"),
            noise_multiplier=read_value(config, "noise-multiplier", float, None, positive, "> 0"),
            sensitivity=read_value(config, "sensitivity", float, None, positive, "> 0"),
            length=read_value(config, "length", int, None, lambda v: v >= 1, ">= 1"),
            ledger_round=read_value(config, "ledger-round", int, None, lambda v: v >= 1, ">= 1"),
            schema_fingerprint=read_value(config, "schema-fingerprint", str, None),
            model=ModelSettings.from_config(config),
            accountant=read_accountant(config),
            noise_sites=read_value(config, "noise-sites", int, 1, lambda v: v >= 1, ">= 1"),
            grid_bits=read_value(config, "grid-bits", int, 0, lambda v: 0 <= v <= 16, "0..16"),
        )

    def to_config(self) -> dict[str, Any]:
        """Flat Flower config form (round trip of :meth:`from_config`)."""
        return {
            **self.model.to_config(),
            "stage": self.stage,
            "noise-multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "length": self.length,
            "ledger-round": self.ledger_round,
            "schema-fingerprint": self.schema_fingerprint,
            "accountant": self.accountant,
            "noise-sites": self.noise_sites,
            "grid-bits": self.grid_bits,
        }
