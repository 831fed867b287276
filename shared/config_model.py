"""Public model and aggregation settings (parts of :class:`shared.config.RunSettings`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.config_read import Scalar, positive, read_value

NUMERIC_ENCODERS: tuple[str, ...] = ("minmax", "dp-quantile")
EFFECT_MODELS: tuple[str, ...] = ("linear", "mlp")
#: Generators fitted from noisy releases of statistics (one message per stage), not
#: DP-SGD rounds (:class:`shared.models.release.ReleaseFamily`; a test keeps this list
#: equal to the registered subclasses, so the config need not import torch to know).
RELEASE_GENERATORS: tuple[str, ...] = ("dp-marginal", "dp-copula")


@dataclass(frozen=True)
class ModelSettings:
    """Generator family and hyper-parameters. Public: chosen without private data."""

    generator: str = "dp-vae"
    hidden: int = 64
    latent: int = 8
    kl_weight: float = 0.5
    #: Family of the covariate stage of the ``"staged"`` generator (ignored by others).
    covariate_generator: str = "dp-vae"
    #: ``"staged"`` only: each treated arm's outcome offset g_a(x): ``"linear"`` in the
    #: encoded covariates, or ``"mlp"`` (linear plus one hidden layer, which also fits
    #: non-linear effect modification but has about 10× the weights, and so the DP noise).
    effect_model: str = "linear"
    #: ``"staged"`` only: weight of the propensity head's loss in the joint per-row loss.
    #: Every row's joint gradient is clipped to C, and the outcome head's gradient is
    #: about 100× the propensity head's, so without a weight the propensity barely
    #: trains; the effect calibration (:mod:`shared.effect`) needs it as a nuisance model.
    propensity_weight: float = 10.0
    #: Number of diffusion steps T of the ``"dp-diffusion"`` family (ignored by others):
    #: sampling runs T denoiser passes; training cost does not depend on T.
    diffusion_steps: int = 50
    #: ``"dp-ctgan"`` only: dimension of the generator's Gaussian noise input z.
    gan_noise: int = 16
    #: ``"dp-ctgan"`` only: share of training draws with no conditional vector
    #: (what unconditional sampling uses); the rest condition on one category.
    gan_uncond_rate: float = 0.5
    #: ``"dp-ctgan"`` only: fake rows added to every discriminator batch (and drawn for
    #: every generator step). Public and fixed: a count that followed the site's row
    #: count n (as q·n would) would let one added row change every step's sum.
    gan_fakes: int = 256
    #: Numeric columns: ``"minmax"`` (public bounds) or ``"dp-quantile"`` (a CDF fitted
    #: from noisy site histograms before round 1, see :mod:`shared.dp_quantile`).
    numeric_encoder: str = "minmax"
    #: Bins of the public grid of the ``"dp-quantile"`` histograms.
    encoder_bins: int = 64
    #: ``"dp-marginal"`` only: equal-width bins of each numeric column on its public
    #: bounds (an integer column with at most this many values gets one bin per value).
    marginal_bins: int = 8

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelSettings:
        """Read ``generator``, ``hidden``, ``latent``, ``kl-weight``, ``covariate-generator``,
        ``effect-model``, ``propensity-weight``, ``diffusion-steps``, ``gan-noise``, ``gan-uncond-rate``, ``gan-fakes``,
        ``numeric-encoder``,
        ``encoder-bins``, ``marginal-bins``."""
        d = cls()
        return cls(
            generator=read_value(config, "generator", str, d.generator),
            hidden=read_value(config, "hidden", int, d.hidden, lambda v: 4 <= v <= 4096, "4..4096"),
            latent=read_value(config, "latent", int, d.latent, lambda v: 1 <= v <= 512, "1..512"),
            kl_weight=read_value(config, "kl-weight", float, d.kl_weight, positive, "> 0"),
            covariate_generator=read_value(
                config, "covariate-generator", str, d.covariate_generator
            ),
            effect_model=read_value(
                config,
                "effect-model",
                str,
                d.effect_model,
                lambda v: v in EFFECT_MODELS,
                f"one of {list(EFFECT_MODELS)}",
            ),
            propensity_weight=read_value(
                config,
                "propensity-weight",
                float,
                d.propensity_weight,
                lambda v: 0 < v <= 1000,
                "in (0, 1000]",
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
            gan_fakes=read_value(
                config, "gan-fakes", int, d.gan_fakes, lambda v: 1 <= v <= 65536, "1..65536"
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
            marginal_bins=read_value(
                config, "marginal-bins", int, d.marginal_bins, lambda v: 2 <= v <= 64, "2..64"
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
            "effect-model": self.effect_model,
            "propensity-weight": self.propensity_weight,
            "diffusion-steps": self.diffusion_steps,
            "gan-noise": self.gan_noise,
            "gan-uncond-rate": self.gan_uncond_rate,
            "gan-fakes": self.gan_fakes,
            "numeric-encoder": self.numeric_encoder,
            "encoder-bins": self.encoder_bins,
            "marginal-bins": self.marginal_bins,
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
            server_tau=read_value(config, "server-tau", float, d.server_tau, positive, "> 0"),
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
