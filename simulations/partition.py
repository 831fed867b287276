"""Split one table into simulated sites.

Specs (``--partition``):

* ``iid``: rows shuffled and dealt into equal shares;
* ``unequal``: rows shuffled (no label skew) and dealt into shares proportional to
  1, 2, …, K (the largest site has K times the rows of the smallest);
* ``dirichlet:ALPHA``: label skew with unequal site sizes. For each class of
  the target column, site shares are drawn from Dirichlet(α); small α means
  strong skew (α = 0.1: sites see mostly one class; α = 100: close to IID);
* ``column:NAME``: one site per value of a categorical column (e.g. a region),
  the natural split when the column records where a patient was treated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.errors import ConfigError
from shared.schema import Schema

MIN_SITE_ROWS = 20


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed ``--partition`` value."""

    kind: str
    alpha: float = 0.0
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parse ``iid``, ``unequal``, ``dirichlet:ALPHA`` or ``column:NAME``."""
        if text in ("iid", "unequal"):
            return cls(text)
        kind, _, arg = text.partition(":")
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                alpha = -1.0
            if not alpha > 0:
                raise ConfigError(
                    f"--partition {text!r}: α must be a positive number, e.g. dirichlet:0.5"
                )
            return cls("dirichlet", alpha=alpha)
        if kind == "column" and arg:
            return cls("column", column=arg)
        raise ConfigError(
            f"--partition {text!r} is not one of iid, unequal, dirichlet:ALPHA, column:NAME"
        )


DEFAULT_HOLDOUT = 0.2  # share of rows no site trains on (kept for evaluation)


def split_holdout(
    frame: pd.DataFrame, share: float, *, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` into (holdout, train) by a seeded shuffle; train is re-indexed."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_hold = round(share * len(frame))
    return frame.iloc[order[:n_hold]], frame.iloc[order[n_hold:]].reset_index(drop=True)


def partition(
    frame: pd.DataFrame, schema: Schema, spec: PartitionSpec, sites: int, *, seed: int = 0
) -> list[pd.DataFrame]:
    """Split ``frame`` into ``sites`` tables (``column:`` makes one per category present).

    Raises
    ------
    ConfigError
        If a site would get fewer than :data:`MIN_SITE_ROWS` rows or the column is unusable.
    """
    rng = np.random.default_rng(seed)
    if spec.kind == "column":
        parts = _by_column(frame, schema, spec.column)
    else:
        if sites < 1:
            raise ConfigError(f"--sites must be >= 1, got {sites}")
        if spec.kind == "iid":
            order = rng.permutation(len(frame))
            parts = [frame.iloc[idx] for idx in np.array_split(order, sites)]
        elif spec.kind == "unequal":
            order = rng.permutation(len(frame))
            weights = np.arange(1, sites + 1)
            cuts = (np.cumsum(weights)[:-1] / weights.sum() * len(frame)).round().astype(int)
            parts = [frame.iloc[idx] for idx in np.split(order, cuts)]
        else:
            parts = _dirichlet(frame, schema, spec.alpha, sites, rng)
    small = [i for i, p in enumerate(parts) if len(p) < MIN_SITE_ROWS]
    if small:
        raise ConfigError(
            f"partition {spec.kind} gives site(s) {small} fewer than {MIN_SITE_ROWS} rows; use "
            "fewer sites, a larger α, or more data"
        )
    return [p.reset_index(drop=True) for p in parts]


def _by_column(frame: pd.DataFrame, schema: Schema, name: str) -> list[pd.DataFrame]:
    if name not in schema.names or schema.column(name).kind != "categorical":
        raise ConfigError(
            f"--partition column:{name}: {name!r} must be a categorical schema column"
        )
    return [
        frame[frame[name] == cat]
        for cat in schema.column(name).categories
        if (frame[name] == cat).any()
    ]


def _dirichlet(
    frame: pd.DataFrame, schema: Schema, alpha: float, sites: int, rng: np.random.Generator
) -> list[pd.DataFrame]:
    target = schema.roles.get("target")
    if not target:
        raise ConfigError(
            "--partition dirichlet needs a 'target' role in the schema (the label to skew)"
        )
    labels = frame[target].astype(str).to_numpy()
    buckets: list[list[int]] = [[] for _ in range(sites)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for site, chunk in enumerate(np.split(idx, cuts)):
            buckets[site].extend(chunk.tolist())
    return [frame.iloc[sorted(b)] for b in buckets]
