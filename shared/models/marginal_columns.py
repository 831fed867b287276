"""Discretisation of ``dp-marginal``'s columns from the public schema, and back.

Codes (what the marginal tables count):

* categorical column: its category index (the transformer's one-hot slot, so a
  nullable column's last code is "missing");
* numeric column: one of ``bins`` equal-width bins on the public bounds (an
  integer column with at most ``bins`` values: one code per value), then one
  code per public atom and a null code when nullable, in the order of the
  column's mode span (:func:`shared.transforms.mode_spans`: slot 0 is "a value
  in the value slot", the other slots follow the value codes).

Values within a bin (what sampling needs back): a binned numeric column also
has a fine histogram, :data:`FINE` cells per bin plus one cell for "exactly the
minimum" and one for "exactly the maximum" (point masses at a public bound,
such as a spending of zero, are common in health data and are lost by drawing
uniformly within the first bin). One row adds 1 to at most one cell of each
binned column's fine histogram (none when missing or at an atom), so these histograms add
the number of binned columns to the squared L2 sensitivity of the release that
carries them. A value is drawn by picking a cell within its bin in proportion
to the (clipped, noisy) counts, then uniformly within the cell, or exactly the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.schema import Column
from shared.transforms import SpanInfo, TableTransformer, mode_spans

#: Fine histogram cells per bin of a binned numeric column.
FINE = 4


@dataclass(frozen=True)
class Discrete:
    """How one column maps to codes ``0..size-1`` and back (public, from the schema)."""

    column: Column
    span: SpanInfo
    #: Numeric only: the ``missing`` or ``atoms`` span, whose slots 1.. are the codes
    #: after the value codes.
    mode: SpanInfo | None
    size: int
    #: Numeric only: values (bins, or integers) before the null code.
    values: int = 0
    #: Numeric only: equal-width bins (True) or one code per integer value (False).
    binned: bool = False


def discretise(transformer: TableTransformer, bins: int) -> list[Discrete]:
    """One :class:`Discrete` per schema column, in schema order."""
    modes = mode_spans(transformer.spans)
    out = []
    for span in (s for s in transformer.spans if s.kind not in ("missing", "atoms")):
        col = transformer.schema.column(span.column)
        if not col.is_numeric:
            out.append(Discrete(col, span, None, span.width))
            continue
        n_values = round(float(col.maximum) - float(col.minimum)) + 1
        per_value = col.kind == "integer" and n_values <= bins
        values = n_values if per_value else bins
        mode = modes.get(col.name)
        size = values + (mode.width - 1 if mode is not None else 0)
        out.append(Discrete(col, span, mode, size, values, not per_value))
    return out


def fine_width(bins: int) -> int:
    """Cells of one binned column's fine histogram: ``FINE · bins`` plus the two bounds."""
    return FINE * bins + 2


def codes(columns: list[Discrete], rows: np.ndarray) -> np.ndarray:
    """``(n, d)`` codes of encoded rows (a pure function of each row)."""
    x = np.asarray(rows, dtype=np.float64)
    out = np.empty((len(x), len(columns)), dtype=np.int64)
    for i, c in enumerate(columns):
        s = c.span
        if not c.column.is_numeric:
            out[:, i] = np.argmax(x[:, s.start : s.stop], axis=1)
            continue
        u = (x[:, s.start] + 1.0) / 2.0  # [0, 1] within the bounds
        code = np.floor(u * c.values) if c.binned else np.rint(u * (c.values - 1))
        out[:, i] = np.clip(code, 0, c.values - 1)
        slot = _mode_slots(c, x)
        out[slot > 0, i] = c.values + slot[slot > 0] - 1
    return out


def _mode_slots(c: Discrete, x: np.ndarray) -> np.ndarray:
    """Slot of each row in the column's mode span (0: a value; none: all 0)."""
    if c.mode is None:
        return np.zeros(len(x), dtype=np.int64)
    slots: np.ndarray = np.argmax(x[:, c.mode.start : c.mode.stop], axis=1).astype(np.int64)
    return slots


def fine_counts(columns: list[Discrete], rows: np.ndarray, bins: int) -> np.ndarray:
    """Fine histograms of every binned column, concatenated (missing values not counted)."""
    x = np.asarray(rows, dtype=np.float64)
    parts = []
    width = fine_width(bins)
    for c in (c for c in columns if c.binned):
        v = x[:, c.span.start]
        present = _mode_slots(c, x) == 0  # neither missing nor at an atom
        cell = 1 + np.clip(np.floor((v + 1.0) / 2.0 * (width - 2)), 0, width - 3)
        cell = np.where(v <= -1.0, 0, np.where(v >= 1.0, width - 1, cell))
        parts.append(np.bincount(cell[present].astype(np.int64), minlength=width))
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def fine_table(columns: list[Discrete], noisy: np.ndarray, bins: int) -> np.ndarray:
    """``(d, fine_width)`` non-negative weights from the noisy fine histograms (0 rows elsewhere).

    Negative counts are clipped; a bin whose cells are all zero falls back to
    uniform within the bin (the bounds' cells stay zero).
    """
    width = fine_width(bins)
    out = np.zeros((len(columns), width))
    pos = 0
    for i, c in enumerate(columns):
        if not c.binned:
            continue
        w = np.clip(np.asarray(noisy[pos : pos + width], dtype=np.float64), 0.0, None)
        pos += width
        for b in range(bins):
            cells = _cells(b, bins)
            if w[cells].sum() <= 0:
                w[1 + b * FINE : 1 + (b + 1) * FINE] = 1.0
        out[i] = w
    return out


def uniform_fine(columns: list[Discrete], bins: int) -> np.ndarray:
    """The unfitted fine table: uniform within every bin (no mass on the bounds)."""
    out = np.zeros((len(columns), fine_width(bins)))
    for i, c in enumerate(columns):
        if c.binned:
            out[i, 1:-1] = 1.0
    return out


def _cells(b: int, bins: int) -> np.ndarray:
    """Fine cells of bin ``b``: its FINE cells, plus the minimum's (first bin) or maximum's."""
    cells = list(range(1 + b * FINE, 1 + (b + 1) * FINE))
    if b == 0:
        cells.insert(0, 0)
    if b == bins - 1:
        cells.append(FINE * bins + 1)
    return np.asarray(cells, dtype=np.int64)


def _binned_values(
    code: np.ndarray, weights: np.ndarray, bins: int, rng: np.random.Generator
) -> np.ndarray:
    """Encoded values ([-1, 1]) of bin codes, drawn through the fine histogram."""
    out = np.zeros(len(code))
    n_fine = FINE * bins
    for b in np.unique(code).tolist():
        rows = np.flatnonzero(code == b)
        cells = _cells(b, bins)
        p = weights[cells] / weights[cells].sum()
        cell = cells[np.minimum(np.searchsorted(np.cumsum(p), rng.random(len(rows))), len(p) - 1)]
        inner = -1.0 + 2.0 * (cell - 1 + rng.random(len(rows))) / n_fine
        out[rows] = np.where(cell == 0, -1.0, np.where(cell == n_fine + 1, 1.0, inner))
    return out


def encode_codes(
    columns: list[Discrete],
    codes_: np.ndarray,
    fine: np.ndarray,
    *,
    width: int,
    bins: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Encoded rows (transformer layout, point values) of sampled codes."""
    out = np.zeros((len(codes_), width), dtype=np.float32)
    rows = np.arange(len(codes_))
    for i, c in enumerate(columns):
        code = codes_[:, i]
        if not c.column.is_numeric:
            out[rows, c.span.start + code] = 1.0
            continue
        present = code < c.values
        v = np.minimum(code, c.values - 1)
        if c.binned:
            value = _binned_values(v, fine[i], bins, rng)
        else:  # one code per integer value
            value = -1.0 + 2.0 * v / max(c.values - 1, 1)
        out[:, c.span.start] = np.where(present, value, 0.0)
        if c.mode is not None:
            out[rows, c.mode.start + np.where(present, 0, code - c.values + 1)] = 1.0
    return out
