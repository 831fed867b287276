"""Typed, validated, frozen configuration objects.

Flower hands apps loose ``dict[str, bool | int | float | str]`` configs. Each
process reads its config exactly once, through one of these classes, and gets
a clear :class:`ConfigError` naming the key and the fix if anything is off.

* :class:`ModelSettings`: generator family and its hyper-parameters (public).
* :class:`AggregationSettings`: how the server combines the sites' updates.
* :class:`TrainSettings`: what one round asks of a site (sent server → site).
* :class:`DistributedStepSettings`: what one distributed DP-SGD step asks of a site.
* :class:`RunSettings`: the ServerApp's run config (``[tool.flwr.app.config]``).

The parts live in ``config_read``, ``config_model``, ``config_site`` and
``config_budget`` (how a run splits its ε); this module is the one place to import
them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shared.config_budget import RunBudget
from shared.config_model import (
    AGGREGATIONS,
    DEFAULT_SERVER_LR,
    NUMERIC_ENCODERS,
    AggregationSettings,
    ModelSettings,
)
from shared.config_read import Scalar, positive, read_accountant, read_value
from shared.config_site import DistributedStepSettings, TrainSettings
from shared.distdp.plan import DistributedPlan, plan_for_run
from shared.errors import ConfigError

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_SERVER_LR",
    "NOISE_PLACEMENTS",
    "NUMERIC_ENCODERS",
    "AggregationSettings",
    "ConfigError",
    "DistributedStepSettings",
    "ModelSettings",
    "RunSettings",
    "Scalar",
    "TrainSettings",
    "app_config_defaults",
    "read_value",
]

NOISE_PLACEMENTS = ("local", "distributed")


@dataclass(frozen=True)
class RunSettings(RunBudget):
    """The ServerApp's run configuration (``[tool.flwr.app.config]`` plus overrides).

    Attributes
    ----------
    epsilon : float
        ε this run may spend at each site; σ is calibrated so that
        ``rounds × local_steps`` steps at rate q land on it (RDP, δ = ``delta``).
    delta : float
        δ used for calibration; should be well below 1 / (rows at the smallest site).
    secure_aggregation : bool
        Sites send masked, quantised updates; the server learns only their sum
        (:mod:`shared.secagg`). ``fedsynth server`` turns it on by default.
    secagg_threshold : int
        Sites needed at every stage of a secure round (0: a strict majority, at least 2).
        The sum stays hidden unless this many parties collude with the server.
    secagg_bits : int
        Quantisation levels ``2**bits`` per coordinate of the update in ``[-C, C]``
        (C = ``update_clip_norm``); the mean's error is below ``2C / (2**bits - 1)``.
    noise_placement : str
        ``"local"``: each site runs ``local_steps`` DP-SGD steps with its own full noise
        and sends a clipped update (FedAvg). ``"distributed"``: every round runs
        ``local_steps`` *central* DP-SGD steps, each one secure aggregation of the
        sites' noisy gradient shares (:mod:`shared.distdp`); needs secure aggregation.
    site_nodes : str
        Deployment only: the file of node id → registered site name that ``fedsynth
        server`` keeps; replies whose declared name disagrees are discarded
        (:mod:`server.identity`). Empty: the sites' declared names are used.
    announced_rows : int
        The consortium's announced total row count (public, declared, not measured; 0:
        none). Local placement: each site divides its noisy gradient sum by q × this /
        ``min_sites`` (:attr:`expected_batch`). Distributed placement (required there): the
        server divides each summed gradient by q × this.
    encoder_budget_fraction : float
        With ``model.numeric_encoder == "dp-quantile"``: DP-SGD's σ is calibrated to
        ``(1 - fraction) · ε``, and the encoder histograms get the noise σ_h that brings
        the composition of both back to exactly ε.
    effect_budget_fraction : float
        With the ``staged`` generator: the share of ε given to the effect calibration
        after the last round (one Gaussian release of each site's clipped AIPW score
        sums, :mod:`shared.effect`); 0 turns it off. DP-SGD's σ is calibrated to the
        rest, and the release's noise brings the run's total back to exactly ε.
    """

    rounds: int = 10
    local_steps: int = 45
    epsilon: float = 3.0
    delta: float = 1e-5
    sample_rate: float = 0.1
    max_grad_norm: float = 1.0
    learning_rate: float = 0.01
    update_clip_norm: float = 10.0
    accountant: str = "rdp"
    seed: int = 0
    schema_path: str = ""
    out_dir: str = ""
    sites_dir: str = ""
    site_nodes: str = ""
    synthetic_rows: int = 0
    device: str = "auto"
    min_sites: int = 1
    round_timeout: float = 600.0
    secure_aggregation: bool = False
    secagg_threshold: int = 0
    secagg_bits: int = 24
    noise_placement: str = "local"
    announced_rows: int = 0
    encoder_budget_fraction: float = 0.1
    effect_budget_fraction: float = 0.2
    model: ModelSettings = field(default_factory=ModelSettings)
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Validate a Flower run config; raises :class:`ConfigError` naming the key."""
        d = cls()
        s = cls(
            rounds=read_value(
                config, "rounds", int, d.rounds, lambda v: 1 <= v <= 10_000, "1..10000"
            ),
            local_steps=read_value(
                config, "local-steps", int, d.local_steps, lambda v: 1 <= v <= 100_000, "1..100000"
            ),
            epsilon=read_value(config, "epsilon", float, d.epsilon, positive, "> 0"),
            delta=read_value(config, "delta", float, d.delta, lambda v: 0 < v < 1, "in (0, 1)"),
            sample_rate=read_value(
                config, "sample-rate", float, d.sample_rate, lambda v: 0 < v <= 1, "in (0, 1]"
            ),
            max_grad_norm=read_value(
                config, "max-grad-norm", float, d.max_grad_norm, positive, "> 0"
            ),
            learning_rate=read_value(
                config, "learning-rate", float, d.learning_rate, positive, "> 0"
            ),
            update_clip_norm=read_value(
                config, "update-clip-norm", float, d.update_clip_norm, positive, "> 0"
            ),
            accountant=read_accountant(config, d.accountant),
            seed=read_value(config, "seed", int, d.seed),
            schema_path=read_value(config, "schema-path", str, d.schema_path),
            out_dir=read_value(config, "out-dir", str, d.out_dir),
            sites_dir=read_value(config, "sites-dir", str, d.sites_dir),
            site_nodes=read_value(config, "site-nodes", str, d.site_nodes),
            synthetic_rows=read_value(
                config,
                "synthetic-rows",
                int,
                d.synthetic_rows,
                lambda v: 0 <= v <= 100_000_000,
                "0..1e8",
            ),
            device=read_value(config, "device", str, d.device),
            min_sites=read_value(config, "min-sites", int, d.min_sites, lambda v: v >= 1, ">= 1"),
            round_timeout=read_value(
                config, "round-timeout", float, d.round_timeout, positive, "> 0"
            ),
            secure_aggregation=read_value(config, "secure-aggregation", bool, d.secure_aggregation),
            secagg_threshold=read_value(
                config,
                "secagg-threshold",
                int,
                d.secagg_threshold,
                lambda v: v == 0 or v >= 2,
                "0 (strict majority) or >= 2 (a sum of one site would be that site's update)",
            ),
            secagg_bits=read_value(
                config, "secagg-bits", int, d.secagg_bits, lambda v: 8 <= v <= 40, "8..40"
            ),
            noise_placement=read_value(
                config,
                "noise-placement",
                str,
                d.noise_placement,
                lambda v: v in NOISE_PLACEMENTS,
                f"one of {list(NOISE_PLACEMENTS)}",
            ),
            announced_rows=read_value(
                config, "announced-rows", int, d.announced_rows, lambda v: v >= 0, ">= 0"
            ),
            encoder_budget_fraction=read_value(
                config,
                "encoder-budget-fraction",
                float,
                d.encoder_budget_fraction,
                lambda v: 0 < v <= 0.5,
                "in (0, 0.5]",
            ),
            effect_budget_fraction=read_value(
                config,
                "effect-budget-fraction",
                float,
                d.effect_budget_fraction,
                lambda v: 0 <= v <= 0.4,
                "in [0, 0.4]",
            ),
            model=ModelSettings.from_config(config),
            aggregation=AggregationSettings.from_config(config),
        )
        if not s.schema_path:
            raise ConfigError(
                "run config 'schema-path' is empty; pass the consortium's schema JSON"
            )
        if not s.out_dir:
            raise ConfigError("run config 'out-dir' is empty; pass an absolute output folder")
        if s.releases_statistics:
            s.check_release_run()
        elif s.noise_placement == "distributed":
            s.distributed_plan()  # refuses (ConfigError) before anything runs
        return s

    @property
    def noise_share_threshold(self) -> int:
        """Secure aggregation threshold when the noise is split over K = ``min_sites`` shares.

        ``secagg_threshold``, or by default a strict majority of the K sites (at least 2).
        """
        return self.secagg_threshold or max(2, self.min_sites // 2 + 1)

    def check_release_run(self) -> None:
        """Refuse settings a release family's Flower run cannot honour.

        Raises
        ------
        ConfigError
            Noise placement ``distributed`` without secure aggregation (each share
            carries only 1/K of the noise) or with fewer than 2 sites or than the
            secure aggregation threshold; or the ``dp-quantile`` numeric encoder.
        """
        name = self.model.generator
        if self.noise_placement == "distributed":
            DistributedPlan.refuse_without_secure_aggregation(self.secure_aggregation)
            threshold = self.noise_share_threshold
            if self.min_sites < 2 or threshold > self.min_sites:
                raise ConfigError(
                    f"generator {name!r} with noise placement 'distributed' splits each "
                    f"stage's noise over min-sites = {self.min_sites} shares, which must be at "
                    f"least 2 and at least the secure aggregation threshold ({threshold}); "
                    "raise --min-sites or lower the threshold"
                )
        if self.fits_encoder:
            raise ConfigError(
                f"generator {name!r} bins numeric columns on their public bounds itself; it "
                "has no use for the dp-quantile encoder. Pass --numeric-encoder minmax"
            )

    def distributed_plan(self) -> DistributedPlan:
        """The public plan of a ``distributed`` run: K = ``min_sites`` noise shares.

        Raises
        ------
        ConfigError
            When the run cannot be distributed (:func:`shared.distdp.plan.plan_for_run`
            lists the cases).
        """
        return plan_for_run(self)

    def train_settings(
        self, server_round: int, *, noise_multiplier: float, schema_fingerprint: str
    ) -> TrainSettings:
        """The :class:`TrainSettings` sent to sites in ``server_round``."""
        return TrainSettings(
            server_round=server_round,
            local_steps=self.local_steps,
            noise_multiplier=noise_multiplier,
            sample_rate=self.sample_rate,
            max_grad_norm=self.max_grad_norm,
            learning_rate=self.learning_rate,
            update_clip_norm=self.update_clip_norm,
            seed=self.seed,
            schema_fingerprint=schema_fingerprint,
            accountant=self.accountant,
            model=self.model,
            proximal_mu=self.aggregation.site_proximal_mu,
            expected_batch=self.expected_batch,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for manifests and reports)."""
        nested = ("model", "aggregation")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in nested}
        out["model"] = asdict(self.model)
        out["aggregation"] = asdict(self.aggregation)
        return out


def app_config_defaults() -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]``: every overridable key with its default."""
    d = RunSettings()
    return {
        "rounds": d.rounds,
        "local-steps": d.local_steps,
        "epsilon": d.epsilon,
        "delta": d.delta,
        "sample-rate": d.sample_rate,
        "max-grad-norm": d.max_grad_norm,
        "learning-rate": d.learning_rate,
        "update-clip-norm": d.update_clip_norm,
        "accountant": d.accountant,
        "seed": d.seed,
        "schema-path": "",
        "out-dir": "",
        "sites-dir": "",
        "site-nodes": "",
        "synthetic-rows": 0,
        "device": d.device,
        "min-sites": d.min_sites,
        "round-timeout": d.round_timeout,
        "secure-aggregation": d.secure_aggregation,
        "secagg-threshold": d.secagg_threshold,
        "secagg-bits": d.secagg_bits,
        "noise-placement": d.noise_placement,
        "announced-rows": d.announced_rows,
        "site-budget-epsilon": 0.0,
        "encoder-budget-fraction": d.encoder_budget_fraction,
        "effect-budget-fraction": d.effect_budget_fraction,
        **ModelSettings().to_config(),
        **AggregationSettings().to_config(),
    }
