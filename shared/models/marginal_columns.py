"""Discretisation of ``dp-marginal``'s columns from the public schema, and back.

Codes (what the marginal tables count):

* categorical column: its category index (the transformer's one-hot slot, so a
  nullable column's last code is "missing");
* numeric column: one of ``bins`` bins (an integer column with at most
  ``bins`` values: one code per value), then one code per public atom and a
  null code when nullable, in the order of the column's mode span
  (:func:`shared.transforms.mode_spans`: slot 0 is "a value in the value
  slot", the other slots follow the value codes).

The fine grid: a binned numeric column's range is cut into :data:`FINE` ·
``bins`` equal cells, plus one cell for "exactly the minimum" and one for
"exactly the maximum" (point masses at a public bound, such as a spending of
zero, are common in health data). A bin is a run of consecutive grid cells:
``edges[b] ≤ cell < edges[b + 1]``. Before any release the bins are equal-width
(:func:`uniform_edges`); ``dp-marginal`` then releases every binned column's
grid histogram and moves the edges to its noisy quantiles (post-processing,
:mod:`shared.models.marginal_grid`), so that health values crowded in a small
part of wide public bounds (creatinine 0.6–1.5 within 0.3–8 mg/dL) spread over
all the bins instead of one or two. The edges are part of the
model, so every site codes its rows the same way.

One row adds 1 to at most one cell of each binned column's grid histogram
(none when missing or at an atom). A value is drawn by picking a grid cell
within its bin in proportion to the noisy histogram, then uniformly within
the cell, or exactly the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.schema import Column
from shared.transforms import SpanInfo, TableTransformer, mode_spans

#: Grid cells per bin of a binned numeric column (finer grids place quantile
#: edges more exactly but carry more noise per unit of mass).
FINE = 8


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


def uniform_margins(sizes: list[int]) -> np.ndarray:
    """``(d, max size)`` margins of independent uniform columns (zero past each size): unfitted."""
    out = np.zeros((len(sizes), max(sizes)))
    for c, size in enumerate(sizes):
        out[c, :size] = 1.0 / size
    return out


def fine_width(bins: int) -> int:
    """Cells of one binned column's grid: ``FINE · bins`` plus the two bounds."""
    return FINE * bins + 2


def uniform_edges(columns: list[Discrete], bins: int) -> np.ndarray:
    """``(d, bins + 1)`` grid edges of equal-width bins (zeros for unbinned columns).

    Bin ``b`` holds the :data:`FINE` grid cells of its width; the first bin also
    holds the minimum's cell and the last the maximum's.
    """
    edges = np.zeros((len(columns), bins + 1), dtype=np.int64)
    for i, c in enumerate(columns):
        if c.binned:
            edges[i] = equal_width(bins)
    return edges


def equal_width(bins: int) -> np.ndarray:
    """Grid edges of ``bins`` equal-width bins (the first and last also hold a bound's cell)."""
    return np.array([0, *(1 + FINE * b for b in range(1, bins)), fine_width(bins)], np.int64)


def structure_maps(columns: list[Discrete], merge: int) -> list[np.ndarray]:
    """Per column, each code's code in the coarser structure tables (``merge`` bins into one).

    Only binned numeric columns are coarsened: their value bins ``b`` become
    ``b // merge``, and atom and null codes follow; every other code keeps its own.
    """
    out = []
    for c in columns:
        code = np.arange(c.size)
        if c.binned and merge > 1:
            coarse = -(-c.values // merge)
            code = np.where(code < c.values, code // merge, coarse + code - c.values)
        out.append(code.astype(np.int64))
    return out


def check_edges(columns: list[Discrete], edges: np.ndarray, bins: int) -> bool:
    """Whether every binned column's edges rise strictly from 0 to the grid's width."""
    if edges.shape != (len(columns), bins + 1):
        return False
    width = fine_width(bins)
    return all(
        not c.binned or (e[0] == 0 and e[-1] == width and bool((np.diff(e) > 0).all()))
        for c, e in zip(columns, edges, strict=True)
    )


def codes(columns: list[Discrete], rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(n, d)`` codes of encoded rows under grid ``edges`` (a pure function of each row)."""
    x = np.asarray(rows, dtype=np.float64)
    out = np.empty((len(x), len(columns)), dtype=np.int64)
    for i, c in enumerate(columns):
        s = c.span
        if not c.column.is_numeric:
            out[:, i] = np.argmax(x[:, s.start : s.stop], axis=1)
            continue
        if c.binned:
            cell = grid_cells(x[:, s.start], len(edges[i]) - 1)
            code = np.searchsorted(edges[i, 1:-1], cell, side="right")
        else:
            code = np.rint((x[:, s.start] + 1.0) / 2.0 * (c.values - 1))
        out[:, i] = np.clip(code, 0, c.values - 1)
        slot = _mode_slots(c, x)
        out[slot > 0, i] = c.values + slot[slot > 0] - 1
    return out


def grid_cells(v: np.ndarray, bins: int) -> np.ndarray:
    """Grid cell of each encoded value (``[-1, 1]``; the bounds get their own cells)."""
    width = fine_width(bins)
    cell = 1 + np.clip(np.floor((v + 1.0) / 2.0 * (width - 2)), 0, width - 3)
    out: np.ndarray = np.where(v <= -1.0, 0, np.where(v >= 1.0, width - 1, cell)).astype(np.int64)
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
        present = _mode_slots(c, x) == 0  # neither missing nor at an atom
        cell = grid_cells(x[present, c.span.start], bins)
        parts.append(np.bincount(cell, minlength=width))
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def uniform_fine(columns: list[Discrete], bins: int) -> np.ndarray:
    """The unfitted fine table: uniform within every bin (no mass on the bounds)."""
    out = np.zeros((len(columns), fine_width(bins)))
    for i, c in enumerate(columns):
        if c.binned:
            out[i, 1:-1] = 1.0
    return out


def _binned_values(
    code: np.ndarray, weights: np.ndarray, edges: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Encoded values ([-1, 1]) of bin codes, drawn through the grid histogram."""
    out = np.zeros(len(code))
    n_fine = len(weights) - 2
    for b in np.unique(code).tolist():
        rows = np.flatnonzero(code == b)
        cells = np.arange(edges[b], edges[b + 1])
        w = weights[cells]
        if w.sum() <= 0:  # no mass left in the bin: uniform over its inner cells
            w = ((cells > 0) & (cells < n_fine + 1)).astype(np.float64)
            w = w if w.sum() > 0 else np.ones(len(cells))
        p = w / w.sum()
        cell = cells[np.minimum(np.searchsorted(np.cumsum(p), rng.random(len(rows))), len(p) - 1)]
        inner = -1.0 + 2.0 * (cell - 1 + rng.random(len(rows))) / n_fine
        out[rows] = np.where(cell == 0, -1.0, np.where(cell == n_fine + 1, 1.0, inner))
    return out


def encode_codes(
    columns: list[Discrete],
    codes_: np.ndarray,
    fine: np.ndarray,
    edges: np.ndarray,
    *,
    width: int,
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
            value = _binned_values(v, fine[i], edges[i], rng)
        else:  # one code per integer value
            value = -1.0 + 2.0 * v / max(c.values - 1, 1)
        out[:, c.span.start] = np.where(present, value, 0.0)
        if c.mode is not None:
            out[rows, c.mode.start + np.where(present, 0, code - c.values + 1)] = 1.0
    return out
