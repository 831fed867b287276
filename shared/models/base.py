"""The generator plugin interface and its name registry.

A *family* is built from the public schema (through :class:`TableTransformer`)
and public hyper-parameters. It exposes one ``torch.nn.Module`` that holds all
of its weights, the part of it that sees real rows (trained with DP-SGD by the
site), a per-row loss with a ``reduction`` attribute (so Opacus's ghost
clipping can get per-row losses), and a sampler.

:meth:`GeneratorFamily.sample` is a template method: the family describes each
row by its output distribution (:meth:`GeneratorFamily.sample_distribution`;
by default point distributions at the rows of ``sample_encoded``), and the base
class draws the values with :class:`shared.constrained.ConstrainedDecoder`, so
every family's output has the schema's dtypes and bounds, meets the schema's
constraints, and can be conditioned on column values
(:mod:`shared.models.sampling`).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from shared.config import ModelSettings
from shared.constrained import ConstrainedDecoder, RowDistribution
from shared.dp_quantile import maps_from_cdfs
from shared.errors import ConfigError, ModelError
from shared.models import sampling
from shared.schema import Schema
from shared.transforms import TableTransformer

_REGISTRY: dict[str, type[GeneratorFamily]] = {}
#: State-dict key of the DP quantile encoder (``numeric-encoder = "dp-quantile"``): the
#: ``(numeric columns, bins + 1)`` CDFs, a public part of the model that is not trained.
ENCODER_KEY = "numeric_encoder_cdf"


class LocalLoop(ABC):
    """Family-specific work around each DP-SGD step of local training (optional).

    :func:`client.training.train_dp` asks the family for one with
    :meth:`GeneratorFamily.local_loop` and, when it gets one, passes each
    Poisson-sampled batch of real rows through :meth:`private_batch` before the
    DP-SGD step on :meth:`GeneratorFamily.private_module`, and calls
    :meth:`after_step` after it. Accounting is unchanged: one DP-SGD step per
    Poisson batch, as the ledger charges.

    The privacy contract (what keeps the guarantee intact):

    * :meth:`private_batch` keeps every real row exactly once (no filtering,
      no duplication, so Poisson sampling at q still holds), may append features
      derived from that row alone, and may add a *fixed, public* number of rows
      that depend on no real row (e.g. a GAN's fake rows): each real row then
      still moves the clipped sum by at most C;
    * :meth:`after_step` may update only weights outside the private module,
      from the private module's current weights and public randomness alone
      (post-processing of the DP-SGD output).
    """

    @abstractmethod
    def private_batch(self, real: torch.Tensor) -> torch.Tensor:
        """The batch the private module's DP-SGD step takes, built from ``real`` rows."""

    @abstractmethod
    def after_step(self) -> None:
        """Post-processing work after each DP-SGD step (e.g. a GAN generator's update)."""


class GeneratorFamily(ABC):
    """Base class of every generator family.

    Parameters
    ----------
    schema : Schema
        The public schema; the only description of the data the model sees.
    settings : ModelSettings
        Public hyper-parameters.
    """

    name: ClassVar[str] = ""
    #: Whether the family encodes through :attr:`transformer` alone (so a DP quantile
    #: encoder can be set on it); families made of sub-families set this to False.
    supports_numeric_encoder: ClassVar[bool] = True

    def __init__(self, schema: Schema, settings: ModelSettings) -> None:
        self.schema = schema
        self.settings = settings
        self.transformer = TableTransformer(schema)
        self.decoder = ConstrainedDecoder(self.transformer)
        self.module: nn.Module = self.build_module()
        numeric = [c for c in schema.columns if c.is_numeric]
        if settings.numeric_encoder == "dp-quantile":
            if not self.supports_numeric_encoder or not numeric:
                raise ConfigError(
                    f"numeric-encoder 'dp-quantile' needs numeric columns and a generator that "
                    f"encodes through one transformer; {self.name!r} on schema {schema.name!r} "
                    "does not: use numeric-encoder 'minmax'"
                )
            # Starts as the uniform CDF (exactly min-max scaling) until the encoder is fitted.
            # float32 (MPS has no float64); CDF steps are >= 1e-5, far above its resolution.
            uniform = torch.linspace(0.0, 1.0, settings.encoder_bins + 1, dtype=torch.float32)
            self.module.register_buffer(ENCODER_KEY, uniform.repeat(len(numeric), 1))
            self.set_numeric_encoder(uniform.double().repeat(len(numeric), 1).numpy())

    def set_numeric_encoder(self, cdfs: np.ndarray) -> None:
        """Install the DP quantile encoder: one CDF per numeric column at the grid edges.

        Raises
        ------
        ModelError
            If a CDF is not strictly increasing from 0 to 1 (a damaged model).
        """
        numeric = [c for c in self.schema.columns if c.is_numeric]
        # Rounded to the buffer's float32 so the server and every site use the same map.
        cdfs = np.asarray(cdfs, dtype=np.float32).astype(np.float64)
        expected = (len(numeric), self.settings.encoder_bins + 1)
        if cdfs.shape != expected:
            raise ModelError(
                f"numeric encoder has shape {cdfs.shape}, expected {expected} for schema "
                f"{self.schema.name!r}; the model or checkpoint is damaged or from another run"
            )
        maps = maps_from_cdfs(
            [c.name for c in numeric], [(c.minimum, c.maximum) for c in numeric], cdfs
        )
        buffer = getattr(self.module, ENCODER_KEY)
        buffer.copy_(torch.from_numpy(cdfs).to(buffer.device, buffer.dtype))
        self.transformer.numeric_maps = maps

    @abstractmethod
    def build_module(self) -> nn.Module:
        """Create the module holding every weight of the family."""

    @abstractmethod
    def private_module(self) -> nn.Module:
        """The sub-module whose gradients touch real rows (wrapped by Opacus)."""

    @abstractmethod
    def criterion(self) -> nn.Module:
        """Per-row loss ``loss(module_output, encoded_rows)`` with a ``reduction`` attribute."""

    @abstractmethod
    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` encoded rows (one-hot spans, scaled numerics) on the module's device."""

    def local_loop(self, *, learning_rate: float) -> LocalLoop | None:
        """Work around each DP-SGD step, or ``None`` (the default: plain DP-SGD).

        What a loop adds to a batch must not depend on the site's rows, nor on how many
        there are (n is private): only on public settings.

        Parameters
        ----------
        learning_rate : float
            The round's Adam step size (public).
        """
        return None

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode a validated table with the schema-only transformer."""
        return self.transformer.encode(frame)

    def sample_distribution(self, n: int, generator: torch.Generator) -> RowDistribution:
        """Output distribution of ``n`` sampled rows (override to expose probabilities).

        The default wraps :meth:`sample_encoded` in point distributions: valid
        for any family, but then constraints and conditions can only be met by
        redrawing rows (bounded). A family whose columns are independent given
        some draw (the VAE's latent z) should return the per-span probabilities
        and Gaussian parameters for that draw instead.
        """
        return RowDistribution.point(self.sample_encoded(n, generator).float().cpu().numpy())

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        batch_size: int = 65_536,
        conditions: Mapping[str, str] | None = None,
        rebalance: str | None = None,
    ) -> pd.DataFrame:
        """Sample ``n`` synthetic rows as a table valid against the schema.

        Sampling is post-processing of the released weights: it touches no data.

        Parameters
        ----------
        n : int
            Number of rows.
        seed : int
            Seed of every random draw; the same seed gives the same table.
        batch_size : int
            Rows drawn from the model at once.
        conditions : mapping of str to str, optional
            ``{column: category}``: every row holds these values, and the other
            columns follow the model's conditional distribution given them.
        rebalance : str, optional
            A categorical column whose categories all get (near) equal counts.

        Raises
        ------
        ConfigError
            An unknown column or category, a numeric column, or conditions the
            schema's constraints (or the model) give probability zero.
        """
        if n < 0:
            raise ConfigError(f"cannot sample a negative number of rows ({n})")
        conds = sampling.check_conditions(self.schema, conditions, rebalance)
        # Buffers too: a release family (shared.models.release) holds no parameters.
        device = next(itertools.chain(self.module.parameters(), self.module.buffers())).device
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.module.eval()

        def draw(k: int) -> RowDistribution:
            return self.sample_distribution(k, gen)

        if rebalance:
            return sampling.rebalanced(self.decoder, draw, n, rebalance, conds, rng, batch_size)
        if conds:
            return sampling.draw_conditioned(self.decoder, draw, n, conds, rng, batch_size)
        return sampling.draw_rows(self.decoder, draw, n, rng, batch_size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights as a plain state dict (Opacus's ``_module.`` prefix removed)."""
        return {_strip(k): v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights, refusing any mismatch of names or shapes."""
        state = {_strip(k): v for k, v in state.items()}
        own = self.module.state_dict()
        if ENCODER_KEY in own and ENCODER_KEY not in state:
            raise ModelError(
                f"the weights hold no numeric encoder ({ENCODER_KEY!r}) although the model uses "
                "numeric-encoder 'dp-quantile': the model folder or checkpoint is damaged or "
                "from a 'minmax' run. Restore it from the run's original output."
            )
        problems = [f"missing {k}" for k in own if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own]
        problems += [
            f"{k}: shape {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if problems:
            raise ModelError(
                f"weights do not fit generator {self.name!r} for schema {self.schema.name!r}: "
                f"{'; '.join(problems[:5])}. Use weights saved for the same schema and settings."
            )
        self.module.load_state_dict(state)
        if ENCODER_KEY in own:
            self.set_numeric_encoder(state[ENCODER_KEY].detach().cpu().numpy())


def _strip(key: str) -> str:
    return key.replace("_module.", "")


def register_family(name: str) -> Callable[[type[GeneratorFamily]], type[GeneratorFamily]]:
    """Class decorator that registers a family under ``name``."""

    def wrap(cls: type[GeneratorFamily]) -> type[GeneratorFamily]:
        if name in _REGISTRY:
            raise ConfigError(f"generator family {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_families() -> list[str]:
    """Names of every registered family."""
    return sorted(_REGISTRY)


def build_generator(schema: Schema, settings: ModelSettings) -> GeneratorFamily:
    """Instantiate the family ``settings.generator`` for ``schema``."""
    try:
        cls = _REGISTRY[settings.generator]
    except KeyError:
        raise ConfigError(
            f"unknown generator {settings.generator!r}; available: {available_families()}"
        ) from None
    return cls(schema, settings)
