"""DP effect calibration of the staged generator: one release of clipped AIPW score sums.

Why. DP-SGD fits the staged generator's outcome model with noise, and the
treatment effect it implies varies from run to run far more than the data
explain (the synthetic AIPW ATE over twelve seeds at ε = 3 and 5 sites, without
this stage: 2.20 kg of SD on NHEFS, whose effect is 3.3 kg; 1.37 mg/dL on the
built-in cohort). So after the last round each site spends a small, fixed share
of its budget on a direct estimate of the effect, and the server moves the outcome
model's treatment offsets so that the generator implies that estimate.

The estimate is the augmented inverse-probability-weighted (AIPW, doubly
robust) mean, with the *released* generator's propensity ê and outcome μ̂ as the
nuisance models (public: post-processing of DP weights). For each non-reference
arm a and each row (x, t, y), in the outcome's encoded units ([-1, 1] on the
public bounds)::

    φ_a = μ̂_a(x) − μ̂_0(x) + 1[t = a] (y − μ̂_a(x)) / ê_a(x) − 1[t = 0] (y − μ̂_0(x)) / ê_0(x)

with ê floored at :data:`PROPENSITY_FLOOR` and φ_a clipped to
[−:data:`SCORE_CLIP`, +:data:`SCORE_CLIP`]. A site releases the vector
``(Σ φ_1, …, Σ φ_{A−1}, n)``: one row adds at most ``(±B, …, ±B, 1)``, so the L2
sensitivity under add/remove of a row is Δ = √((A − 1) B² + 1)
(:func:`effect_sensitivity`), and the site adds N(0, (σ_e Δ)²) to every
coordinate. That is one Gaussian mechanism, charged to the site's ledger as
``(σ_e, q = 1, 1 step)`` before the reply. The server sums the sites' vectors
and divides (:func:`effect_from_sums`); everything after is post-processing.

Both the floor and the clip are public constants, not tuned on private rows.
Clipping biases φ only for rows whose weighted residual exceeds B (an outcome
residual beyond half the public range at ê = 0.5); the floor bounds the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.config_model import ModelSettings
from shared.errors import ConfigError

#: B: each row's AIPW score per arm is clipped to [-B, B] (outcome's encoded units).
SCORE_CLIP = 1.0
#: ê_a is floored here before it divides a residual (bounds the weights at 20).
PROPENSITY_FLOOR = 0.05


def effect_sensitivity(arms: int) -> float:
    """L2 sensitivity Δ = √((A − 1) B² + 1) of one site's ``(Σ φ, n)`` vector.

    Parameters
    ----------
    arms : int
        Treatment arms A (at least 2).
    """
    if arms < 2:
        raise ConfigError(f"an effect needs at least 2 treatment arms, got {arms}")
    return math.sqrt((arms - 1) * SCORE_CLIP**2 + 1.0)


def add_effect_noise(
    sums: np.ndarray, *, noise_multiplier: float, arms: int, rng: np.random.Generator
) -> np.ndarray:
    """``sums`` plus N(0, (σ_e Δ)²) per coordinate (the Gaussian mechanism).

    Parameters
    ----------
    sums : numpy.ndarray
        ``(Σ φ_1, …, Σ φ_{A−1}, n)`` of one site.
    noise_multiplier : float
        σ_e, the noise std in units of the sensitivity Δ.
    arms : int
        Treatment arms A.
    rng : numpy.random.Generator
        The site's noise source.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise multiplier σ_e must be positive, got {noise_multiplier}")
    scale = noise_multiplier * effect_sensitivity(arms)
    return np.asarray(sums, np.float64) + rng.normal(0.0, scale, size=np.shape(sums))


def effect_from_sums(total: np.ndarray) -> np.ndarray:
    """ψ_a = Σ φ_a / n per non-reference arm from the summed noisy vectors.

    The noisy n is floored at 1 so that a tiny consortium cannot divide by ~0.
    """
    total = np.asarray(total, np.float64)
    return np.asarray(total[:-1] / max(float(total[-1]), 1.0))


@dataclass(frozen=True)
class EffectRequest:
    """What the server asks of a site in the effect calibration. Every field is public.

    Attributes
    ----------
    noise_multiplier : float
        σ_e, noise std in units of the sensitivity Δ (:func:`effect_sensitivity`).
    arms : int
        Treatment arms A of the schema's treatment column.
    ledger_round : int
        The round number the release is recorded under (one after the last round).
    model : ModelSettings
        The run's generator settings, to rebuild the released generator at the site.
    """

    noise_multiplier: float
    arms: int
    ledger_round: int
    schema_fingerprint: str
    model: ModelSettings
    accountant: str = "rdp"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EffectRequest:
        """Parse the ``effect-config`` record a site receives."""
        from shared.config_read import read_accountant, read_value

        return cls(
            noise_multiplier=read_value(
                config, "noise-multiplier", float, None, lambda v: v > 0, "> 0"
            ),
            arms=read_value(config, "arms", int, None, lambda v: 2 <= v <= 64, "2..64"),
            ledger_round=read_value(config, "ledger-round", int, None, lambda v: v >= 1, ">= 1"),
            schema_fingerprint=read_value(config, "schema-fingerprint", str, None),
            model=ModelSettings.from_config(config),
            accountant=read_accountant(config),
        )

    def to_config(self) -> dict[str, Any]:
        """Flat Flower config form (round trip of :meth:`from_config`)."""
        return {
            **self.model.to_config(),
            "noise-multiplier": self.noise_multiplier,
            "arms": self.arms,
            "ledger-round": self.ledger_round,
            "schema-fingerprint": self.schema_fingerprint,
            "accountant": self.accountant,
        }
