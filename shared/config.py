"""Typed, validated, frozen configuration objects.

Flower hands apps loose ``dict[str, bool | int | float | str]`` configs. Each
process reads its config exactly once, through one of these classes, and gets
a clear :class:`ConfigError` naming the key and the fix if anything is off.

* :class:`ModelSettings`: generator family and its hyper-parameters (public).
* :class:`TrainSettings`: what one round asks of a site (sent server → site).
* :class:`RunSettings`: the ServerApp's run config (``[tool.flwr.app.config]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from shared.accounting import ACCOUNTANTS, calibrate_noise
from shared.distdp.plan import DistributedPlan
from shared.errors import ConfigError

T = TypeVar("T", int, float, str, bool)
NUMERIC_ENCODERS: tuple[str, ...] = ("minmax", "dp-quantile")
Scalar = bool | int | float | str
NOISE_PLACEMENTS = ("local", "distributed")


def read_value(
    config: Mapping[str, Any],
    key: str,
    kind: type[T],
    default: T | None = None,
    check: Callable[[T], bool] | None = None,
    rule: str = "",
) -> T:
    """Read one typed value from a Flower config mapping.

    Parameters
    ----------
    config : Mapping
        Run, node or message config.
    key : str
        Key to read (kebab-case, as written in TOML).
    kind : type
        Expected type; ints are accepted where floats are expected.
    default : optional
        Value when the key is absent; ``None`` makes the key required.
    check : callable, optional
        Extra validation; ``rule`` describes it in the error.
    """
    if key not in config:
        if default is None:
            raise ConfigError(f"config key {key!r} is required ({rule or kind.__name__}); set it")
        return default
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"config key {key!r} must be a {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be finite, got {value!r}")
    if check is not None and not check(value):
        raise ConfigError(f"config key {key!r} = {value!r} is invalid: must be {rule}")
    return value


def _positive(x: float) -> bool:
    return x > 0


@dataclass(frozen=True)
class ModelSettings:
    """Generator family and hyper-parameters. Public: chosen without private data."""

    generator: str = "dp-vae"
    hidden: int = 64
    latent: int = 8
    kl_weight: float = 0.5
    #: Family of the covariate stage of the ``"staged"`` generator (ignored by others).
    covariate_generator: str = "dp-vae"
    #: Number of diffusion steps T of the ``"dp-diffusion"`` family (ignored by others):
    #: sampling runs T denoiser passes; training cost does not depend on T.
    diffusion_steps: int = 50
    #: ``"dp-ctgan"`` only: dimension of the generator's Gaussian noise input z.
    gan_noise: int = 16
    #: ``"dp-ctgan"`` only: share of training draws with no conditional vector
    #: (what unconditional sampling uses); the rest condition on one category.
    gan_uncond_rate: float = 0.5
    #: Numeric columns: ``"minmax"`` (public bounds) or ``"dp-quantile"`` (a CDF fitted
    #: from noisy site histograms before round 1, see :mod:`shared.dp_quantile`).
    numeric_encoder: str = "minmax"
    #: Bins of the public grid of the ``"dp-quantile"`` histograms.
    encoder_bins: int = 64

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelSettings:
        """Read ``generator``, ``hidden``, ``latent``, ``kl-weight``, ``covariate-generator``,
        ``diffusion-steps``, ``gan-noise``, ``gan-uncond-rate``, ``numeric-encoder``,
        ``encoder-bins``."""
        d = cls()
        return cls(
            generator=read_value(config, "generator", str, d.generator),
            hidden=read_value(config, "hidden", int, d.hidden, lambda v: 4 <= v <= 4096, "4..4096"),
            latent=read_value(config, "latent", int, d.latent, lambda v: 1 <= v <= 512, "1..512"),
            kl_weight=read_value(config, "kl-weight", float, d.kl_weight, _positive, "> 0"),
            covariate_generator=read_value(
                config, "covariate-generator", str, d.covariate_generator
            ),
            diffusion_steps=read_value(
                config,
                "diffusion-steps",
                int,
                d.diffusion_steps,
                lambda v: 2 <= v <= 1000,
                "2..1000",
            ),
            gan_noise=read_value(
                config, "gan-noise", int, d.gan_noise, lambda v: 1 <= v <= 512, "1..512"
            ),
            gan_uncond_rate=read_value(
                config,
                "gan-uncond-rate",
                float,
                d.gan_uncond_rate,
                lambda v: 0 < v < 1,
                "in (0, 1): 0 never trains unconditional sampling, 1 never conditions",
            ),
            numeric_encoder=read_value(
                config,
                "numeric-encoder",
                str,
                d.numeric_encoder,
                lambda v: v in NUMERIC_ENCODERS,
                f"one of {list(NUMERIC_ENCODERS)}",
            ),
            encoder_bins=read_value(
                config, "encoder-bins", int, d.encoder_bins, lambda v: 8 <= v <= 1024, "8..1024"
            ),
        )

    def to_config(self) -> dict[str, Scalar]:
        """Flat Flower config form."""
        return {
            "generator": self.generator,
            "hidden": self.hidden,
            "latent": self.latent,
            "kl-weight": self.kl_weight,
            "covariate-generator": self.covariate_generator,
            "diffusion-steps": self.diffusion_steps,
            "gan-noise": self.gan_noise,
            "gan-uncond-rate": self.gan_uncond_rate,
            "numeric-encoder": self.numeric_encoder,
            "encoder-bins": self.encoder_bins,
        }


#: Server aggregation choices (see :mod:`server.optimisers`).
AGGREGATIONS = ("fedavg", "fedavgm", "fedadam", "fedprox")


@dataclass(frozen=True)
class AggregationSettings:
    """How the server turns the sites' mean update into the next global model. Public.

    Attributes
    ----------
    aggregation : str
        ``fedavg`` (w += η·Δ̄), ``fedavgm`` (server momentum, Hsu et al. 2019),
        ``fedadam`` (Reddi et al., ICLR 2021) or ``fedprox`` (FedAvg on the server
        plus the proximal term μ/2‖w − w_global‖² in each site's local objective,
        Li et al., MLSys 2020).
    server_learning_rate : float
        η, the server step on the mean update Δ̄ (treated as a pseudo-gradient).
        0 means the aggregation's own default (:data:`DEFAULT_SERVER_LR`).
    server_momentum : float
        β (fedavgm) or β₁ (fedadam), in [0, 1).
    server_beta2 : float
        β₂ of fedadam, in [0, 1).
    server_tau : float
        τ, fedadam's adaptivity floor (v starts at τ², the step divides by √v + τ).
    proximal_mu : float
        μ of fedprox, in units of 1 / (weight units)²; sent to sites (0 for the others).
    """

    aggregation: str = "fedavg"
    server_learning_rate: float = 0.0
    server_momentum: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    proximal_mu: float = 0.1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AggregationSettings:
        """Read ``aggregation``, ``server-learning-rate``, ``server-momentum``,
        ``server-beta2``, ``server-tau`` and ``proximal-mu``."""
        d = cls()
        unit = (lambda v: 0 <= v < 1, "in [0, 1)")
        return cls(
            aggregation=read_value(
                config,
                "aggregation",
                str,
                d.aggregation,
                lambda v: v in AGGREGATIONS,
                f"one of {list(AGGREGATIONS)}",
            ),
            server_learning_rate=read_value(
                config,
                "server-learning-rate",
                float,
                d.server_learning_rate,
                lambda v: v >= 0,
                ">= 0 (0: the aggregation's default)",
            ),
            server_momentum=read_value(config, "server-momentum", float, d.server_momentum, *unit),
            server_beta2=read_value(config, "server-beta2", float, d.server_beta2, *unit),
            server_tau=read_value(config, "server-tau", float, d.server_tau, _positive, "> 0"),
            proximal_mu=read_value(
                config, "proximal-mu", float, d.proximal_mu, lambda v: v >= 0, ">= 0"
            ),
        )

    def to_config(self) -> dict[str, Scalar]:
        """Flat Flower config form."""
        return {
            "aggregation": self.aggregation,
            "server-learning-rate": self.server_learning_rate,
            "server-momentum": self.server_momentum,
            "server-beta2": self.server_beta2,
            "server-tau": self.server_tau,
            "proximal-mu": self.proximal_mu,
        }

    @property
    def learning_rate(self) -> float:
        """η actually used: the setting, or the aggregation's default when it is 0."""
        return self.server_learning_rate or DEFAULT_SERVER_LR[self.aggregation]

    @property
    def site_proximal_mu(self) -> float:
        """μ the sites add to their objective: ``proximal_mu`` under fedprox, else 0."""
        return self.proximal_mu if self.aggregation == "fedprox" else 0.0


#: η when ``server-learning-rate`` is 0. FedAdam moves every coordinate by about η
#: per round whatever the update's size, so its η is on the scale of a weight step.
DEFAULT_SERVER_LR = {"fedavg": 1.0, "fedavgm": 0.3, "fedadam": 0.01, "fedprox": 1.0}


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
            noise_multiplier=read_value(config, "noise-multiplier", float, None, _positive, "> 0"),
            sample_rate=read_value(
                config, "sample-rate", float, None, lambda v: 0 < v <= 1, "in (0, 1]"
            ),
            max_grad_norm=read_value(config, "max-grad-norm", float, None, _positive, "> 0"),
            learning_rate=read_value(config, "learning-rate", float, None, _positive, "> 0"),
            update_clip_norm=read_value(config, "update-clip-norm", float, None, _positive, "> 0"),
            seed=read_value(config, "seed", int, 0),
            schema_fingerprint=read_value(config, "schema-fingerprint", str, None),
            accountant=read_value(
                config,
                "accountant",
                str,
                "rdp",
                lambda v: v in ACCOUNTANTS,
                f"one of {list(ACCOUNTANTS)}",
            ),
            model=ModelSettings.from_config(config),
            proximal_mu=read_value(config, "proximal-mu", float, 0.0, lambda v: v >= 0, ">= 0"),
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


@dataclass(frozen=True)
class RunSettings:
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
    announced_rows : int
        Distributed only: the consortium's announced total row count; the server divides
        each summed gradient by the public expected batch q × this (row counts are private).
    encoder_budget_fraction : float
        With ``model.numeric_encoder == "dp-quantile"``: DP-SGD's σ is calibrated to
        ``(1 - fraction) · ε``, and the encoder histograms get the noise σ_h that brings
        the composition of both back to exactly ε.
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
            epsilon=read_value(config, "epsilon", float, d.epsilon, _positive, "> 0"),
            delta=read_value(config, "delta", float, d.delta, lambda v: 0 < v < 1, "in (0, 1)"),
            sample_rate=read_value(
                config, "sample-rate", float, d.sample_rate, lambda v: 0 < v <= 1, "in (0, 1]"
            ),
            max_grad_norm=read_value(
                config, "max-grad-norm", float, d.max_grad_norm, _positive, "> 0"
            ),
            learning_rate=read_value(
                config, "learning-rate", float, d.learning_rate, _positive, "> 0"
            ),
            update_clip_norm=read_value(
                config, "update-clip-norm", float, d.update_clip_norm, _positive, "> 0"
            ),
            accountant=read_value(
                config,
                "accountant",
                str,
                d.accountant,
                lambda v: v in ACCOUNTANTS,
                f"one of {list(ACCOUNTANTS)}",
            ),
            seed=read_value(config, "seed", int, d.seed),
            schema_path=read_value(config, "schema-path", str, d.schema_path),
            out_dir=read_value(config, "out-dir", str, d.out_dir),
            sites_dir=read_value(config, "sites-dir", str, d.sites_dir),
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
                config, "round-timeout", float, d.round_timeout, _positive, "> 0"
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
            model=ModelSettings.from_config(config),
            aggregation=AggregationSettings.from_config(config),
        )
        if not s.schema_path:
            raise ConfigError(
                "run config 'schema-path' is empty; pass the consortium's schema JSON"
            )
        if not s.out_dir:
            raise ConfigError("run config 'out-dir' is empty; pass an absolute output folder")
        if s.noise_placement == "distributed":
            s.distributed_plan()  # refuses (ConfigError) before anything runs
        return s

    def distributed_plan(self) -> DistributedPlan:
        """The public plan of a ``distributed`` run: K = ``min_sites`` noise shares.

        Raises
        ------
        ConfigError
            Without secure aggregation, without announced rows, with the PRV
            accountant, with a DP numeric encoder (its budget would come on top), or
            when ``min_sites`` cannot carry the secagg threshold.
        """
        # Checked first: with it off, nothing else about the plan matters.
        DistributedPlan.refuse_without_secure_aggregation(self.secure_aggregation)
        if self.announced_rows < 1:
            raise ConfigError(
                "noise placement 'distributed' needs the consortium's announced total row count "
                "(run config 'announced-rows', --announced-rows): the server divides each summed "
                "gradient by the public expected batch q × that count"
            )
        if self.accountant != "rdp":
            raise ConfigError(
                "noise placement 'distributed' is accounted with RDP only; use --accountant rdp"
            )
        if self.aggregation.aggregation != "fedavg":
            raise ConfigError(
                "noise placement 'distributed' takes its own server-side Adam step on every "
                f"summed gradient, so aggregation {self.aggregation.aggregation!r} does not "
                "apply; use --aggregation fedavg with it"
            )
        if self.model.numeric_encoder != "minmax":
            raise ConfigError(
                "noise placement 'distributed' calibrates σ for the whole ε, so it cannot also "
                f"spend budget on the {self.model.numeric_encoder!r} encoder histograms; use "
                "--numeric-encoder minmax with it, or noise placement 'local'"
            )
        threshold = self.secagg_threshold or max(2, self.min_sites // 2 + 1)
        if self.min_sites < 2 or threshold > self.min_sites:
            raise ConfigError(
                f"noise placement 'distributed' splits the noise over min-sites = {self.min_sites} "
                f"shares and needs at least the secure aggregation threshold ({threshold}) and "
                "at least 2; raise min-sites or lower the threshold"
            )
        return DistributedPlan(
            epsilon=self.epsilon,
            delta=self.delta,
            steps=self.planned_steps,
            sample_rate=self.sample_rate,
            clip_norm=self.max_grad_norm,
            learning_rate=self.learning_rate,
            expected_batch=self.sample_rate * self.announced_rows,
            noise_sites=self.min_sites,
            threshold=threshold,
            secure_aggregation=self.secure_aggregation,
        )

    @property
    def planned_steps(self) -> int:
        """DP-SGD steps each site runs in this run."""
        return self.rounds * self.local_steps

    @property
    def fits_encoder(self) -> bool:
        """Whether the run starts with the DP histogram stage (``dp-quantile`` encoder)."""
        return self.model.numeric_encoder == "dp-quantile"

    def noise_multiplier(self) -> float:
        """σ calibrated so this run's planned steps spend exactly :attr:`epsilon`.

        With a DP encoder the steps get ``(1 - encoder_budget_fraction) · ε`` and
        :meth:`encoder_noise_multiplier` brings the total back to ε.
        """
        share = 1.0 - self.encoder_budget_fraction if self.fits_encoder else 1.0
        return calibrate_noise(
            target_epsilon=self.epsilon * share,
            delta=self.delta,
            sample_rate=self.sample_rate,
            steps=self.planned_steps,
            accountant=self.accountant,
        )

    def encoder_noise_multiplier(self) -> float:
        """σ_h of the encoder histograms: DP-SGD at :meth:`noise_multiplier` plus it is ε."""
        from shared.dp_quantile import calibrate_histogram_noise

        return calibrate_histogram_noise(
            target_epsilon=self.epsilon,
            delta=self.delta,
            training=(self.noise_multiplier(), self.sample_rate, self.planned_steps),
            accountant=self.accountant,
        )

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
        **ModelSettings().to_config(),
        **AggregationSettings().to_config(),
    }
