"""The whole run's charges, announced to every site before anything is charged.

A site's budget check in each stage (:mod:`client.precheck`) only looks at that
stage. A run whose later rounds some sites cannot afford would therefore train,
charge every site for the early rounds, and stop when too few sites are left:
budget spent on a model that is never released. Before its first charge the
coordinator sends every site this plan: each Gaussian mechanism the run has left,
as ``(σ, q, steps)``. A site that could not afford all of them says so, and a run
that fewer than ``min_sites`` sites could finish stops before anyone is charged.

The plan is public (the run's settings); answering it reads only the ledger.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.accounting import Mechanism
from shared.config import TrainSettings
from shared.config_read import read_accountant, read_value
from shared.errors import ConfigError


def train_config_digest(train: TrainSettings) -> str:
    """SHA-256 of a round's config alone (no weights): what a site's replay record keeps."""
    return hashlib.sha256(json.dumps(train.to_config(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class PlanRequest:
    """Every mechanism a run has left, in the order it runs. Every field is public.

    Attributes
    ----------
    labels : tuple of str
        What each mechanism is ("encoder", "training", "effect", "release stage 0", …).
    noise_multipliers : tuple of float
        σ of each mechanism, in units of its clip norm C or L2 sensitivity Δ.
    sample_rates : tuple of float
        q of each, the Poisson sampling rate (1 for a release over all rows).
    steps : tuple of int
        Compositions of each.
    schema_fingerprint : str
        The consortium schema's fingerprint (a site with another schema cannot take part).
    accountant : str
        The privacy accountant the site's ledger composes with.
    replay_config : str
        :func:`train_config_digest` of the first training round left, or ``""``. A
        site whose last sent update answered that round (the coordinator restarted
        before saving it) re-sends it at no charge, so it leaves that round's steps
        out of its projection.
    round_steps : int
        The steps of one training round (what such a re-sent round does not cost); 0
        when the plan has no training rounds.
    """

    labels: tuple[str, ...]
    noise_multipliers: tuple[float, ...]
    sample_rates: tuple[float, ...]
    steps: tuple[int, ...]
    schema_fingerprint: str
    accountant: str = "rdp"
    replay_config: str = ""
    round_steps: int = 0

    def __post_init__(self) -> None:
        n = len(self.labels)
        if not (len(self.noise_multipliers) == len(self.sample_rates) == len(self.steps) == n):
            raise ConfigError("a run plan needs one σ, one q and one step count per mechanism")
        for sigma, q, steps in self.mechanisms():
            if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and steps >= 0):
                raise ConfigError(
                    f"a run plan holds an invalid mechanism (σ={sigma!r}, q={q!r}, "
                    f"steps={steps!r}); σ must be > 0, q in (0, 1] and steps >= 0"
                )
        if self.round_steps < 0:
            raise ConfigError(f"round-steps must be >= 0, got {self.round_steps}")

    def mechanisms(self, *, replayed: bool = False) -> list[Mechanism]:
        """The plan as ``(σ, q, steps)``; ``replayed`` drops one training round's steps."""
        out = list(zip(self.noise_multipliers, self.sample_rates, self.steps, strict=True))
        if replayed and "training" in self.labels:
            i = self.labels.index("training")
            sigma, q, steps = out[i]
            out[i] = (sigma, q, max(0, steps - self.round_steps))
        return out

    def describe(self) -> str:
        """One line: each mechanism with its σ, q and steps."""
        return "; ".join(
            f"{label} σ={s:.4g} q={q:.4g} × {k}"
            for label, (s, q, k) in zip(self.labels, self.mechanisms(), strict=True)
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PlanRequest:
        """Parse the ``plan`` record a site receives."""

        def listed(key: str, kind: type) -> tuple[Any, ...]:
            value = config.get(key, [])
            if not isinstance(value, list) or not all(
                isinstance(v, kind) and not isinstance(v, bool) for v in value
            ):
                raise ConfigError(f"run plan key {key!r} must be a list of {kind.__name__}")
            return tuple(value)

        return cls(
            labels=listed("labels", str),
            noise_multipliers=tuple(float(v) for v in listed("noise-multipliers", float)),
            sample_rates=tuple(float(v) for v in listed("sample-rates", float)),
            steps=listed("steps", int),
            schema_fingerprint=read_value(config, "schema-fingerprint", str, None),
            accountant=read_accountant(config),
            replay_config=read_value(config, "replay-config", str, ""),
            round_steps=read_value(config, "round-steps", int, 0),
        )

    def to_config(self) -> dict[str, Any]:
        """Flat Flower config form (round trip of :meth:`from_config`)."""
        return {
            "labels": list(self.labels),
            "noise-multipliers": [float(v) for v in self.noise_multipliers],
            "sample-rates": [float(v) for v in self.sample_rates],
            "steps": [int(v) for v in self.steps],
            "schema-fingerprint": self.schema_fingerprint,
            "accountant": self.accountant,
            "replay-config": self.replay_config,
            "round-steps": self.round_steps,
        }
