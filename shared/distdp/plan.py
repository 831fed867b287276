"""The public, validated parameters of a distributed DP-SGD run, and its privacy statement."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.accounting import calibrate_noise
from shared.distdp.accounting import (
    distributed_epsilon,
    largest_tolerated_collusion,
    sensitivity,
)
from shared.errors import ConfigError

if TYPE_CHECKING:  # config imports this module
    from shared.config import RunSettings


@dataclass(frozen=True)
class DistributedPlan:
    """Public parameters of a distributed DP-SGD run; ε, δ in the usual (ε, δ) sense.

    Attributes
    ----------
    epsilon, delta : float
        Budget per row over the whole run, against the server (no collusion).
    steps : int
        DP-SGD steps, one secure aggregation round each.
    sample_rate : float
        q: Poisson rate of every row at every site, per step.
    clip_norm : float
        C: per-row gradient L2 bound.
    learning_rate : float
        Server-side Adam step size.
    expected_batch : float
        Public divisor of the summed gradient: q times the consortium's *announced*
        total row count. Row counts are not public in fedsynth, so this is declared,
        not measured; a wrong value only rescales the step (Adam is nearly invariant).
    noise_sites : int
        K: the noise is split into K shares; a round with fewer inputs is aborted.
    threshold : int
        Secure aggregation threshold t_s; the server may collude with t_s − 1 sites.
    grid_bits : int
        Grid step γ = C · 2**-grid_bits of the integer encoding.
    secure_aggregation : bool
        Must be on: without it the server would see each share with 1/K of the noise.
    """

    epsilon: float
    delta: float
    steps: int
    sample_rate: float
    clip_norm: float
    learning_rate: float
    expected_batch: float
    noise_sites: int
    threshold: int
    grid_bits: int = 16
    secure_aggregation: bool = True

    @staticmethod
    def refuse_without_secure_aggregation(secure_aggregation: bool) -> None:
        """Raise :class:`ConfigError` unless secure aggregation is on (see the class doc)."""
        if not secure_aggregation:
            raise ConfigError(
                "noise placement 'distributed' needs secure aggregation: each site adds only "
                "1/K of the noise, so without it the server would see under-noised gradients. "
                "Turn secure aggregation on (--secure-aggregation), or use noise placement 'local'"
            )

    def __post_init__(self) -> None:
        self.refuse_without_secure_aggregation(self.secure_aggregation)
        checks = {
            "epsilon": self.epsilon > 0 and math.isfinite(self.epsilon),
            "delta": 0 < self.delta < 1,
            "steps": self.steps >= 1,
            "sample_rate": 0 < self.sample_rate <= 1,
            "clip_norm": self.clip_norm > 0,
            "learning_rate": self.learning_rate > 0,
            "expected_batch": self.expected_batch > 0,
            "noise_sites": self.noise_sites >= 2,
            "threshold": 2 <= self.threshold <= self.noise_sites,
            "grid_bits": 4 <= self.grid_bits <= 30,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"distributed DP plan: invalid {', '.join(bad)}; need ε > 0, 0 < δ < 1, "
                "steps ≥ 1, 0 < q ≤ 1, C, learning rate and expected batch > 0, K ≥ 2, "
                "2 ≤ threshold ≤ K, grid bits in 4..30"
            )

    @property
    def grid(self) -> float:
        """γ: float value of one integer unit."""
        return self.clip_norm * 2.0**-self.grid_bits

    def sigma(self, dim: int) -> float:
        """Total σ (units of C) so that the run spends exactly ε at t = 0 for ``dim`` parameters."""
        base = calibrate_noise(
            target_epsilon=self.epsilon,
            delta=self.delta,
            sample_rate=self.sample_rate,
            steps=self.steps,
        )
        # The accountant sees σC/Δ with Δ = C + γ√d; scale σ so that equals ``base``.
        return (
            base * sensitivity(clip_norm=self.clip_norm, grid=self.grid, dim=dim) / self.clip_norm
        )

    def epsilon_at(self, *, dim: int, colluders: int) -> float:
        """ε per row against the server colluding with ``colluders`` sites."""
        return distributed_epsilon(
            sigma=self.sigma(dim),
            sample_rate=self.sample_rate,
            steps=self.steps,
            delta=self.delta,
            clip_norm=self.clip_norm,
            grid=self.grid,
            dim=dim,
            sites=self.noise_sites,
            colluders=colluders,
        )

    def privacy_statement(self, *, dim: int) -> str:
        """Markdown: the guarantee per collusion level and the trust it rests on."""
        t_max = largest_tolerated_collusion(sites=self.noise_sites, threshold=self.threshold)
        eps0, eps_t = (
            self.epsilon_at(dim=dim, colluders=0),
            self.epsilon_at(dim=dim, colluders=t_max),
        )
        return "\n".join(
            [
                "## Distributed DP-SGD: guarantee and trust assumptions",
                "",
                f"- Noise multiplier σ = {self.sigma(dim):.4f} in total, split into "
                f"K = {self.noise_sites} shares (each site adds variance σ²C²/K on the integers: "
                "distributed discrete Gaussian, Kairouz, Liu & Steinke, ICML 2021).",
                f"- Against the server and outside parties: ε = {eps0:.3f}, δ = {self.delta:g} per "
                f"row, over {self.steps} steps at q = {self.sample_rate:g}.",
                f"- Against the server colluding with t = {t_max} site(s) (the most this "
                f"configuration tolerates): the honest noise is σ·√((K − t)/K), ε = {eps_t:.3f}.",
                "- This holds only if secure aggregation holds: the server learns the sum of the "
                "sites' vectors and nothing else, and no more than "
                f"{t_max} site(s) share their secrets or noise with the server.",
                f"- Dropouts: a round in which fewer than K = {self.noise_sites} sites send their "
                "input is aborted before unmasking (its sum would carry too little noise); the "
                "server learns nothing from it, and the step still counts in the accounting.",
                "- Encoding: stochastic rounding to a grid γ = "
                f"{self.grid:.3g} is accounted as sensitivity C + γ√d (d = {dim}); sums wrap "
                "modulo 2^48, and a sum near the wrap point stops the run.",
                "- The divisor of the summed gradient is a public, announced expected batch "
                f"({self.expected_batch:g} rows); no site's row count is revealed.",
            ]
        )


def plan_for_run(run: RunSettings) -> DistributedPlan:
    """The plan of a ``distributed`` run, or a :class:`ConfigError` saying what to change.

    Refused without secure aggregation, without announced rows, with the PRV
    accountant, with a server optimiser other than FedAvg, with any other budget
    share (the DP encoder's histograms or the staged effect calibration would come on
    top of a σ calibrated to the whole ε), or when ``min_sites`` cannot carry the
    secure aggregation threshold.
    """
    # Checked first: with it off, nothing else about the plan matters.
    DistributedPlan.refuse_without_secure_aggregation(run.secure_aggregation)
    if run.announced_rows < 1:
        raise ConfigError(
            "noise placement 'distributed' needs the consortium's announced total row count "
            "(run config 'announced-rows', --announced-rows): the server divides each summed "
            "gradient by the public expected batch q × that count"
        )
    if run.accountant != "rdp":
        raise ConfigError(
            "noise placement 'distributed' is accounted with RDP only; use --accountant rdp"
        )
    if run.aggregation.aggregation != "fedavg":
        raise ConfigError(
            "noise placement 'distributed' takes its own server-side Adam step on every "
            f"summed gradient, so aggregation {run.aggregation.aggregation!r} does not "
            "apply; use --aggregation fedavg with it"
        )
    if run.calibrates_effect:
        raise ConfigError(
            "noise placement 'distributed' calibrates σ for the whole ε, so it cannot also "
            "spend budget on the staged generator's effect calibration; use "
            "--effect-budget-fraction 0 with it, or noise placement 'local'"
        )
    if run.model.numeric_encoder != "minmax":
        raise ConfigError(
            "noise placement 'distributed' calibrates σ for the whole ε, so it cannot also "
            f"spend budget on the {run.model.numeric_encoder!r} encoder histograms; use "
            "--numeric-encoder minmax with it, or noise placement 'local'"
        )
    threshold = run.noise_share_threshold
    if run.min_sites < 2 or threshold > run.min_sites:
        raise ConfigError(
            f"noise placement 'distributed' splits the noise over min-sites = {run.min_sites} "
            f"shares and needs at least the secure aggregation threshold ({threshold}) and "
            "at least 2; raise min-sites or lower the threshold"
        )
    return DistributedPlan(
        epsilon=run.epsilon,
        delta=run.delta,
        steps=run.planned_steps,
        sample_rate=run.sample_rate,
        clip_norm=run.max_grad_norm,
        learning_rate=run.learning_rate,
        expected_batch=run.sample_rate * run.announced_rows,
        noise_sites=run.min_sites,
        threshold=threshold,
        secure_aggregation=run.secure_aggregation,
    )
