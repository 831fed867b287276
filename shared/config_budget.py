"""How a run's ε is split over its mechanisms: the privacy-budget half of :class:`RunSettings`.

:class:`RunBudget` is a mixin of :class:`shared.config.RunSettings` (import that,
not this module). It holds the maths that turns the validated settings into the
noise of each mechanism a site is charged for, so that together they spend
exactly ε per site (:meth:`RunBudget.mechanisms`), and the public divisor of a
site's DP-SGD step (:attr:`RunBudget.expected_batch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from shared.accounting import calibrate_noise
from shared.config_model import RELEASE_GENERATORS, ModelSettings
from shared.config_site import NOMINAL_SITE_ROWS
from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.config import RunSettings


class RunBudget:
    """Noise multipliers, mechanisms and the public divisor of a run (mixin).

    The attributes are :class:`~shared.config.RunSettings` fields.
    """

    rounds: int
    local_steps: int
    epsilon: float
    delta: float
    sample_rate: float
    accountant: str
    min_sites: int
    announced_rows: int
    encoder_budget_fraction: float
    effect_budget_fraction: float
    model: ModelSettings

    @property
    def releases_statistics(self) -> bool:
        """Whether the generator is fitted from one noisy release per stage (no DP-SGD)."""
        return self.model.generator in RELEASE_GENERATORS

    def release_noise_multiplier(self) -> float:
        """σ of one Gaussian release at (ε, δ): the accountant's ``(σ, q = 1, 1 step)``.

        A release family splits it over its stages as σ_s = σ / √ρ_s
        (:func:`shared.models.release.stage_noise_multipliers`), so the stages
        together spend exactly :attr:`epsilon` per site.
        """
        return calibrate_noise(
            target_epsilon=self.epsilon,
            delta=self.delta,
            sample_rate=1.0,
            steps=1,
            accountant=self.accountant,
        )

    @property
    def planned_steps(self) -> int:
        """DP-SGD steps each site runs in this run."""
        return self.rounds * self.local_steps

    @property
    def fits_encoder(self) -> bool:
        """Whether the run starts with the DP histogram stage (``dp-quantile`` encoder)."""
        return self.model.numeric_encoder == "dp-quantile"

    @property
    def calibrates_effect(self) -> bool:
        """Whether the run ends with the staged generator's DP effect calibration."""
        return self.model.generator == "staged" and self.effect_budget_fraction > 0

    def noise_multiplier(self) -> float:
        """σ calibrated so this run's planned steps spend exactly their share of :attr:`epsilon`.

        A DP encoder takes ``encoder_budget_fraction`` of ε and the effect calibration
        ``effect_budget_fraction``; the steps get the rest, and
        :meth:`encoder_noise_multiplier` and :meth:`effect_noise_multiplier` bring the
        total back to ε.
        """
        share = 1.0 - self.encoder_budget_fraction if self.fits_encoder else 1.0
        if self.calibrates_effect:
            share -= self.effect_budget_fraction
        return calibrate_noise(
            target_epsilon=self.epsilon * share,
            delta=self.delta,
            sample_rate=self.sample_rate,
            steps=self.planned_steps,
            accountant=self.accountant,
        )

    def encoder_noise_multiplier(self) -> float:
        """σ_h of the encoder histograms: DP-SGD plus it spend ε minus the effect's share."""
        from shared.dp_quantile import calibrate_histogram_noise

        share = 1.0 - self.effect_budget_fraction if self.calibrates_effect else 1.0
        return calibrate_histogram_noise(
            target_epsilon=self.epsilon * share,
            delta=self.delta,
            training=(self.noise_multiplier(), self.sample_rate, self.planned_steps),
            accountant=self.accountant,
        )

    def effect_noise_multiplier(self) -> float:
        """σ_e of the effect release: with DP-SGD (and the encoder) the run spends ε."""
        from shared.dp_quantile import calibrate_histogram_noise

        if not self.calibrates_effect:
            raise ConfigError("this run has no effect calibration (staged generator only)")
        encoder = ((self.encoder_noise_multiplier(), 1.0, 1),) if self.fits_encoder else ()
        return calibrate_histogram_noise(
            target_epsilon=self.epsilon,
            delta=self.delta,
            training=(self.noise_multiplier(), self.sample_rate, self.planned_steps),
            accountant=self.accountant,
            others=encoder,
            hint="raise effect-budget-fraction, or set it to 0",
        )

    def mechanisms(self) -> list[tuple[float, float, int]]:
        """Every ``(σ, q, steps)`` this run charges a site for, in the order they run."""
        if self.releases_statistics:
            from shared.models.release import release_stage_noise  # imports torch: only here

            return [(s, 1.0, 1) for s in release_stage_noise(cast("RunSettings", self))]
        out = [(self.encoder_noise_multiplier(), 1.0, 1)] if self.fits_encoder else []
        out.append((self.noise_multiplier(), self.sample_rate, self.planned_steps))
        if self.calibrates_effect:
            out.append((self.effect_noise_multiplier(), 1.0, 1))
        return out

    @property
    def expected_batch(self) -> float:
        """The public divisor (rows) of a site's noisy gradient sum in local DP-SGD.

        q × the announced rows per site (``announced_rows / min_sites``), or q ×
        :data:`~shared.config_site.NOMINAL_SITE_ROWS` when none were announced; at
        least 1. Row counts are private, so a site never divides by its own q·n. A
        value far from a site's q·n only rescales its averaged gradient, which Adam's
        step ignores; under FedProx it sets the proximal term's weight against it.
        """
        rows = (
            self.announced_rows / max(self.min_sites, 1)
            if self.announced_rows > 0
            else NOMINAL_SITE_ROWS
        )
        return max(1.0, self.sample_rate * rows)
