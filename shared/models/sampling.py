"""Sampling behind :meth:`GeneratorFamily.sample`: constraints, conditions, rebalancing.

Conditional sampling is self-normalised importance resampling (SIR; Rubin,
"Using the SIR algorithm to simulate posterior distributions", 1988) over the
family's per-row distributions. Each candidate row distribution (for the VAE:
one latent draw z) is weighted by the probability it gives to the requested
values, ``w = P(conditions | z)`` (renormalised over the tuples the constraints
allow); ``n`` candidates are resampled by weight and decoded with the
conditioned columns fixed. Because columns are conditionally independent given
z, this draws from the model's own conditional distribution (exactly as the
number of candidates grows). Candidates are drawn until the effective sample
size ``(Σw)² / Σw²`` reaches the chunk size or a fixed cap is hit; the sampler
never gives up on a value of positive probability, and says so clearly when a
value has probability zero.

Sampling is post-processing of released weights: it touches no site data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from shared.constrained import ConstrainedDecoder, RowDistribution
from shared.errors import ConfigError, ModelError
from shared.schema import Schema

log = logging.getLogger("fedsynth")

#: Rounds of redrawing rows a point-distribution family could not fit to the constraints.
MAX_REDRAWS = 50
#: Output rows resampled together, and the cap on candidates per output row.
SIR_CHUNK = 2048
MAX_CANDIDATES_PER_ROW = 100

Draw = Callable[[int], RowDistribution]


def _listed(names: list[str], limit: int = 20) -> str:
    """``names`` for an error message, saying how many were left out."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_conditions(
    schema: Schema, conditions: Mapping[str, str] | None, rebalance: str | None
) -> dict[str, str]:
    """Validate ``COL=VALUE`` conditions and the rebalance column against the schema."""
    conds = dict(conditions or {})
    for name, value in [*conds.items(), *([(rebalance, None)] if rebalance else [])]:
        if name not in schema.names:
            choices = [c.name for c in schema.columns if not c.is_numeric]
            verb = "rebalance" if value is None else "condition on"
            raise ConfigError(
                f"cannot {verb} {name!r}: not a column of schema {schema.name!r}; "
                f"the categorical columns are {_listed(choices)}"
            )
        col = schema.column(name)
        if col.is_numeric:
            raise ConfigError(
                f"cannot condition on or rebalance {name!r}: it is {col.kind}; only categorical "
                "columns can be conditioned on or rebalanced"
            )
        if value is not None and value not in col.categories:
            raise ConfigError(
                f"cannot condition on {name}={value!r}: not a category of {name!r}; "
                f"use one of {_listed(list(col.categories))}"
            )
    if rebalance and rebalance in conds:
        raise ConfigError(f"{rebalance!r} is both conditioned on and rebalanced; choose one")
    return conds


def condition_weight(
    decoder: ConstrainedDecoder, dist: RowDistribution, conds: Mapping[str, str]
) -> np.ndarray:
    """``P(conditions | row distribution)``, renormalised over the allowed tuples."""
    w = np.ones(len(dist))
    done: set[str] = set()
    for name, value in conds.items():
        comp = decoder.plan.component_of(name)
        if comp is None:
            w *= decoder.probs(dist, name)[:, decoder.schema.column(name).categories.index(value)]
            continue
        if comp.columns[0] in done:
            continue
        done.add(comp.columns[0])
        match = np.ones(len(comp.feasible), dtype=bool)
        for i, c in enumerate(comp.columns):
            if c in conds:
                slot = decoder.schema.column(c).categories.index(conds[c])
                match &= comp.feasible[:, i] == slot
        if not match.any():
            rules = "; ".join(r.describe() for r in comp.constraints)
            wanted = {c: conds[c] for c in comp.columns if c in conds}
            raise ConfigError(
                f"the conditions {wanted} can never hold under the schema's constraints "
                f"[{rules}]; change the conditions"
            )
        logw = decoder.tuple_logweights(dist, comp)
        top = logw.max(axis=1, keepdims=True)
        ok = np.isfinite(top[:, 0])
        e = np.exp(logw - np.where(ok[:, None], top, 0.0))
        total = e.sum(axis=1)
        part = e[:, match].sum(axis=1)
        w *= np.where(ok, np.divide(part, total, out=np.zeros_like(total), where=total > 0), 0.0)
    return w


def fix_conditions(
    decoder: ConstrainedDecoder, dist: RowDistribution, conds: Mapping[str, str]
) -> RowDistribution:
    """The same distributions with each conditioned column certain to hold its value."""
    params = dist.params.copy()
    for name, value in conds.items():
        span = decoder.span[name]
        params[:, span.start : span.stop] = 0.0
        params[:, span.start + decoder.schema.column(name).categories.index(value)] = 1.0
    return RowDistribution(params, dist.scale)


def _rules(decoder: ConstrainedDecoder) -> str:
    """The schema's constraints, for an error message."""
    return "; ".join(c.describe() for c in decoder.schema.constraints)


def draw_rows(
    decoder: ConstrainedDecoder, draw: Draw, n: int, rng: np.random.Generator, batch: int
) -> pd.DataFrame:
    """``n`` rows meeting the constraints; unmet rows are redrawn a bounded number of times."""
    parts: list[pd.DataFrame] = []
    need, rounds = n, 0
    while need > 0:
        k = min(batch, need)
        table, unmet = decoder.decode(draw(k), rng)
        parts.append(table[~unmet])
        need -= int((~unmet).sum())
        rounds += int(unmet.any())
        if rounds > MAX_REDRAWS:
            raise ModelError(
                f"after {MAX_REDRAWS} redraws the generator still produces rows that break the "
                f"schema's constraints [{_rules(decoder)}], and its rows cannot be repaired "
                "(it returns finished rows, not probabilities). Train it on data that meets the constraints, "
                "or use a family that reports probabilities (dp-vae)"
            )
    return _concat(parts, decoder)


def draw_conditioned(
    decoder: ConstrainedDecoder,
    draw: Draw,
    n: int,
    conds: Mapping[str, str],
    rng: np.random.Generator,
    batch: int,
) -> pd.DataFrame:
    """``n`` rows from the model's conditional distribution given ``conds`` (SIR, chunked)."""
    parts: list[pd.DataFrame] = []
    for start in range(0, n, SIR_CHUNK):
        k = min(SIR_CHUNK, n - start)
        cands: list[RowDistribution] = []
        weights: list[np.ndarray] = []
        drawn, ess = 0, 0.0
        while ess < k and drawn < MAX_CANDIDATES_PER_ROW * k:
            size = min(batch, max(4 * k, 1024))
            dist = draw(size)
            w = condition_weight(decoder, dist, conds)
            keep = w > 0
            cands.append(dist.rows(keep))
            weights.append(w[keep])
            drawn += size
            all_w = np.concatenate(weights)
            ess = float(all_w.sum() ** 2 / (all_w**2).sum()) if all_w.size else 0.0
        all_w = np.concatenate(weights)
        if not all_w.size:
            raise ConfigError(
                f"the generator gave probability 0 to {dict(conds)} in {drawn:,} draws: it cannot "
                "produce such rows. Drop or change the condition"
            )
        if ess < k:
            log.warning(
                "conditional sampling of %s: effective sample size %.0f < %d after %d candidates; "
                "rows share fewer distinct latent draws than requested",
                dict(conds),
                ess,
                k,
                drawn,
            )
        pool = RowDistribution.concat(cands)
        parts.extend(_resample_met(decoder, pool, all_w / all_w.sum(), k, conds, rng))
    return _concat(parts, decoder)


def _resample_met(
    decoder: ConstrainedDecoder,
    pool: RowDistribution,
    p: np.ndarray,
    k: int,
    conds: Mapping[str, str],
    rng: np.random.Generator,
) -> list[pd.DataFrame]:
    """``k`` rows resampled from ``pool`` by ``p`` and decoded with ``conds`` fixed.

    A family that returns finished rows (a copula, a marginal model) can hold a drawn
    number that breaks an inequality no categorical choice repairs; such rows are
    resampled again, a bounded number of times, as :func:`draw_rows` redraws them.
    """
    parts: list[pd.DataFrame] = []
    need = k
    for _ in range(MAX_REDRAWS + 1):
        chosen = fix_conditions(decoder, pool.rows(rng.choice(p.size, size=need, p=p)), conds)
        table, unmet = decoder.decode(chosen, rng)
        parts.append(table[~unmet])
        need = int(unmet.sum())
        if need == 0:
            return parts
    raise ModelError(
        f"after {MAX_REDRAWS} redraws, {need} of {k} rows conditioned on {dict(conds)} still "
        f"break the schema's constraints [{_rules(decoder)}]: the generator gives such rows "
        "almost no mass. Drop or change the condition, or use a family that reports probabilities "
        "(dp-vae)"
    )


def rebalanced(
    decoder: ConstrainedDecoder,
    draw: Draw,
    n: int,
    column: str,
    conds: Mapping[str, str],
    rng: np.random.Generator,
    batch: int,
) -> pd.DataFrame:
    """``n`` rows with (as near as possible) equal counts of every category of ``column``."""
    cats = decoder.schema.column(column).categories
    counts = [n // len(cats) + (1 if i < n % len(cats) else 0) for i in range(len(cats))]
    parts = [
        draw_conditioned(decoder, draw, k, {**conds, column: cat}, rng, batch)
        for cat, k in zip(cats, counts, strict=True)
        if k
    ]
    table = _concat(parts, decoder)
    return table.iloc[rng.permutation(len(table))].reset_index(drop=True)


def _concat(parts: list[pd.DataFrame], decoder: ConstrainedDecoder) -> pd.DataFrame:
    if not parts:
        none = RowDistribution.point(np.zeros((0, decoder.transformer.width)))
        empty, _ = decoder.decode(none, np.random.default_rng(0))
        return empty
    return pd.concat(parts, ignore_index=True)
