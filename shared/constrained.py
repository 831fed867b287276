"""Decode a generator's per-row output distribution into rows that meet the constraints.

Families describe each sampled row by a :class:`RowDistribution`: probabilities
on the one-hot spans and a Gaussian (location, scale) on each numeric value, in
the transformer's layout. A family that can only produce finished rows passes
them as point distributions (:meth:`RowDistribution.point`).

:class:`ConstrainedDecoder` draws the values itself, so the constraints hold by
construction (see :mod:`shared.constraint_plan` for why no dead end exists):

* categorical columns linked by constraints are drawn as one feasible tuple per
  row, with probability proportional to the product of the per-column
  probabilities (the row's distribution renormalised over the feasible tuples);
* numeric columns are drawn in topological order of the comparisons, each from
  its Gaussian truncated (inverse CDF) to the interval its bounds and the
  already-drawn columns allow; integers are rounded inside that interval;
* a numeric column with public atoms first draws its mode (continuous, one of
  the atoms, or missing) from the row's mode probabilities with every atom
  outside that row's allowed interval set to 0 and the rest renormalised, then
  the value only for rows whose mode is continuous. The plan guarantees that
  any value inside the interval (an atom included) can be completed, and the
  continuous mode always can, so no row reaches a dead end.

A row whose distribution gives zero probability to every feasible tuple (only
possible with point distributions) is returned as *unmet*: the caller redraws it
(bounded rejection, :mod:`shared.models.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from shared.constraint_plan import Component, ConstraintPlan, above, build_plan
from shared.errors import SchemaError
from shared.transforms import SpanInfo, TableTransformer

_CHUNK_CELLS = 4_000_000  # rows x feasible tuples scored at once


@dataclass(frozen=True)
class RowDistribution:
    """Per-row output distribution of a generator, in the transformer's layout.

    Attributes
    ----------
    params : numpy.ndarray
        ``(n, width)``: probabilities on categorical and missing spans (each span
        sums to a positive number), the location of the Gaussian on numeric
        values (scaled units, [-1, 1] is the column's bounds).
    scale : numpy.ndarray
        ``(n, width)``: standard deviation (scaled units) on numeric values, 0
        elsewhere and for point values.
    """

    params: np.ndarray
    scale: np.ndarray

    @classmethod
    def point(cls, encoded: np.ndarray) -> RowDistribution:
        """Point distributions at finished encoded rows (one-hot spans, values)."""
        enc = np.asarray(encoded, dtype=np.float32)
        return cls(enc, np.zeros_like(enc))

    def __len__(self) -> int:
        return int(self.params.shape[0])

    def rows(self, index: np.ndarray) -> RowDistribution:
        """The distributions of the selected rows (an index or a boolean mask)."""
        return RowDistribution(self.params[index], self.scale[index])

    @staticmethod
    def concat(parts: list[RowDistribution]) -> RowDistribution:
        """Stack several batches."""
        return RowDistribution(
            np.concatenate([p.params for p in parts]), np.concatenate([p.scale for p in parts])
        )


class ConstrainedDecoder:
    """Draw rows from :class:`RowDistribution` objects, meeting the schema's constraints.

    Parameters
    ----------
    transformer : TableTransformer
        The schema-only transformer whose layout the distributions follow.
    """

    def __init__(self, transformer: TableTransformer) -> None:
        self.transformer = transformer
        self.schema = transformer.schema
        problems: list[str] = []
        self.plan: ConstraintPlan = build_plan(
            self.schema.columns, self.schema.constraints, problems
        )
        if problems:  # Schema.from_dict already refuses these; a hand-built Schema may not
            raise SchemaError(self.schema.name, problems)
        self.span: dict[str, SpanInfo] = {
            s.column: s for s in transformer.spans if s.kind not in ("missing", "atoms")
        }
        self.missing: dict[str, SpanInfo] = {
            s.column: s for s in transformer.spans if s.kind == "missing"
        }
        self.atoms: dict[str, SpanInfo] = {
            s.column: s for s in transformer.spans if s.kind == "atoms"
        }
        in_component = {c for comp in self.plan.components for c in comp.columns}
        self.free = [
            c.name for c in self.schema.columns if not c.is_numeric and c.name not in in_component
        ]
        # Padded positions of the free columns' spans, so all of them draw in one pass.
        spans = [self.span[name] for name in self.free]
        width = max((sp.width for sp in spans), default=0)
        self._free_pos = np.array(
            [[sp.start + min(k, sp.width - 1) for k in range(width)] for sp in spans],
            dtype=np.int64,
        ).reshape(len(spans), width)
        self._free_valid = np.arange(width)[None, :] < np.array([sp.width for sp in spans])[:, None]

    def probs(self, dist: RowDistribution, column: str) -> np.ndarray:
        """Normalised ``(n, slots)`` probabilities of a categorical column (0 rows stay 0)."""
        span = self.span[column]
        p = np.clip(dist.params[:, span.start : span.stop].astype(np.float64), 0.0, None)
        total = p.sum(axis=1, keepdims=True)
        return np.asarray(np.divide(p, total, out=np.zeros_like(p), where=total > 0))

    def tuple_logweights(self, dist: RowDistribution, comp: Component) -> np.ndarray:
        """``log`` of the probability of each feasible tuple, ``(rows, tuples)``."""
        out = np.zeros((len(dist), len(comp.feasible)))
        with np.errstate(divide="ignore"):
            for i, name in enumerate(comp.columns):
                out += np.log(self.probs(dist, name))[:, comp.feasible[:, i]]
        return out

    def decode(
        self, dist: RowDistribution, rng: np.random.Generator
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Draw one row per distribution.

        Returns
        -------
        (pandas.DataFrame, numpy.ndarray)
            The rows (schema order and dtypes, as :meth:`TableTransformer.decode`)
            and a boolean mask of *unmet* rows, which no value assignment allowed
            by the distribution could make meet the constraints; drop and redraw them.
        """
        n = len(dist)
        unmet = np.zeros(n, dtype=bool)
        slots: dict[str, np.ndarray] = {}
        if self.free:
            p = np.clip(dist.params[:, self._free_pos].astype(np.float64), 0.0, None)
            p *= self._free_valid
            cum = np.cumsum(p, axis=2)
            total = cum[:, :, -1]
            unmet |= (total == 0).any(axis=1)
            idx = (cum < rng.random(total.shape)[:, :, None] * total[:, :, None]).sum(axis=2)
            idx = np.minimum(idx, self._free_valid.sum(axis=1) - 1)
            for k, name in enumerate(self.free):
                slots[name] = idx[:, k]
        for comp in self.plan.components:
            chosen = np.zeros(n, dtype=np.int64)
            step = max(1, _CHUNK_CELLS // len(comp.feasible))
            for start in range(0, n, step):
                rows = slice(start, min(n, start + step))
                logw = self.tuple_logweights(dist.rows(np.arange(rows.start, rows.stop)), comp)
                top = logw.max(axis=1, keepdims=True)
                dead = ~np.isfinite(top[:, 0])
                w = np.exp(logw - np.where(dead[:, None], 0.0, top))
                w[dead] = 1.0  # placeholder; these rows are reported as unmet
                unmet[rows] |= dead
                chosen[rows] = _draw(w / w.sum(axis=1, keepdims=True), rng)
            for i, name in enumerate(comp.columns):
                slots[name] = comp.feasible[chosen, i]
        data: dict[str, pd.Series] = {}
        for col in self.schema.columns:
            if not col.is_numeric:
                labels = np.array([*col.categories, None], dtype=object)
                data[col.name] = pd.Series(labels[slots[col.name]], dtype=object)
        values = self._numeric(dist, rng, unmet)
        for name, x in values.items():
            kind = "Int64" if self.schema.column(name).kind == "integer" else "float64"
            data[name] = pd.Series(x, dtype=kind)
        return pd.DataFrame(data, columns=self.schema.names), unmet

    def _numeric(
        self, dist: RowDistribution, rng: np.random.Generator, unmet: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Draw every numeric column in the plan's order; flag rows with no allowed mode."""
        n = len(dist)
        values: dict[str, np.ndarray] = {}
        for name in self.plan.order:
            col = self.schema.column(name)
            span = self.span[name]
            lo = np.full(n, self.plan.lower[name])
            hi = np.full(n, self.plan.upper[name])
            integer = col.kind == "integer"
            for e in self.plan.edges:
                if e.big == name:
                    prev = values[e.small]
                    known = ~np.isnan(prev)
                    raised = above(np.where(known, prev, lo), e.strict, integer)
                    lo = np.where(known, np.maximum(lo, raised), lo)
            if name in self.transformer.numeric_maps:
                # A quantile map is monotone: draw in encoded units between the mapped
                # bounds, then map back (the Gaussian head lives in encoded units).
                qmap = self.transformer.numeric_maps[name]
                loc = dist.params[:, span.start].astype(np.float64)
                scale = dist.scale[:, span.start].astype(np.float64)
                u = truncated_normal(loc, scale, qmap.forward(lo), qmap.forward(hi), rng.random(n))
                x = np.clip(qmap.inverse(u), lo, hi)
            else:
                half = (col.maximum - col.minimum) / 2.0
                loc = col.minimum + (dist.params[:, span.start].astype(np.float64) + 1.0) * half
                scale = dist.scale[:, span.start].astype(np.float64) * half
                x = truncated_normal(loc, scale, lo, hi, rng.random(n))
            if integer:
                x = np.round(x)  # lo and hi are whole numbers, so rounding stays inside
            miss = self.missing.get(name)
            if miss is not None:
                p_missing = self.probs_missing(dist, miss)
                x = np.where(rng.random(n) < p_missing, np.nan, x)
            modes = self.atoms.get(name)
            if modes is not None:
                p = self.mode_probs(dist, modes, np.array(col.atoms), lo, hi)
                unmet |= p.sum(axis=1) == 0  # only point rows at a forbidden atom
                mode = _draw(p, rng)
                points = np.array([np.nan, *col.atoms, np.nan])
                x = np.where(mode == 0, x, points[mode])
            values[name] = x
        return values

    @staticmethod
    def mode_probs(
        dist: RowDistribution, span: SpanInfo, atoms: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """Unnormalised ``(n, slots)`` mode probabilities, 0 on atoms outside ``[lo, hi]``.

        ``lo`` and ``hi`` are each row's allowed interval (bounds, ``range``
        constraints, comparisons with the columns drawn before). The continuous
        and missing slots are kept: the interval is never empty (the plan checks it).
        """
        p = np.clip(dist.params[:, span.start : span.stop].astype(np.float64), 0.0, None)
        k = len(atoms)
        allowed = (atoms[None, :] >= lo[:, None]) & (atoms[None, :] <= hi[:, None])
        p[:, 1 : 1 + k] *= allowed
        return p

    @staticmethod
    def probs_missing(dist: RowDistribution, span: SpanInfo) -> np.ndarray:
        """Probability that each row's value is missing (from the ``[present, missing]`` span)."""
        p = np.clip(dist.params[:, span.start : span.stop].astype(np.float64), 0.0, None)
        total = p.sum(axis=1)
        return np.asarray(np.divide(p[:, 1], total, out=np.zeros(len(p)), where=total > 0))


def _draw(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of a row-stochastic matrix (rows of zeros give index 0)."""
    u = rng.random((len(p), 1))
    idx = (np.cumsum(p, axis=1) < u * p.sum(axis=1, keepdims=True)).sum(axis=1)
    return np.asarray(np.minimum(idx, p.shape[1] - 1), dtype=np.int64)


def truncated_normal(
    loc: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Inverse-CDF draw from N(loc, scale²) truncated to ``[lo, hi]`` (elementwise).

    Intervals in the upper tail are mirrored to the lower tail, where the normal
    CDF keeps its precision. When the interval holds no representable mass (or
    ``scale`` is 0) the value is the point of the interval nearest ``loc``. The
    result always lies in ``[lo, hi]``.
    """
    safe = np.where(scale > 0, scale, 1.0)
    with np.errstate(over="ignore"):  # ±inf standardised bounds are handled below
        a, b = (lo - loc) / safe, (hi - loc) / safe
    flip = a > 0
    a, b = np.where(flip, -b, a), np.where(flip, -a, b)
    pa, pb = ndtr(a), ndtr(b)
    mass = pb - pa
    with np.errstate(divide="ignore", invalid="ignore"):
        z = ndtri(pa + u * mass)
    z = np.where(mass > 0, z, b)  # no mass left: the end nearest the mean
    z = np.clip(np.nan_to_num(z, nan=0.0), a, b)
    x = loc + np.where(flip, -z, z) * safe
    x = np.where(scale > 0, x, loc)
    return np.asarray(np.clip(x, lo, hi), dtype=np.float64)
