"""Schema-only, invertible row encoding shared by every site.

The transformer is a pure function of the public schema: it never looks at
rows to fit anything, so every site produces identical encodings and the
encoding itself leaks nothing.

Layout of an encoded row, column by column in schema order:

* categorical column with k categories: a one-hot span of width k
  (k + 1 when nullable; the last slot means "missing");
* numeric column: one value, min–max scaled from the public bounds to [-1, 1]
  (0 when missing); when nullable, followed by a 2-wide span
  ``[present, missing]``. A column with a :class:`shared.dp_quantile.QuantileMap`
  (a public CDF fitted under DP) is mapped through it to [-1, 1] instead.
* numeric column with public atoms ``a_1..a_k`` (see :mod:`shared.schema`): the
  value as above, followed by one "mode" span ``[continuous, a_1, ..., a_k]``,
  plus a last ``missing`` slot when nullable (this span replaces the
  ``[present, missing]`` span; a column without atoms keeps today's layout).
  A row whose value equals an atom exactly is encoded in that atom's slot with
  value 0; any other present value in the ``continuous`` slot.

In both the ``missing`` and the ``atoms`` span, slot 0 means "the value slot
holds a value" (:func:`mode_spans`): the VAE and the staged heads mask the value's
loss with it; the diffusion model masks only missing values (see its loss).

:class:`SpanInfo` records tell models which output head each span needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from shared.dp_quantile import QuantileMap
from shared.errors import FedsynthError
from shared.schema import Column, Schema

SpanKind = Literal["categorical", "numeric", "missing", "atoms"]


@dataclass(frozen=True)
class SpanInfo:
    """Where one column's encoding sits in the row vector and how to model it.

    Attributes
    ----------
    column : str
        Schema column the span belongs to.
    kind : {"categorical", "numeric", "missing", "atoms"}
        ``categorical``, ``missing`` and ``atoms`` spans are one-hot (softmax
        heads); ``numeric`` spans are one scaled value in [-1, 1] (Gaussian
        head). ``atoms`` is a numeric column's mode ``[continuous, atoms...,
        (missing)]``.
    start, width : int
        Slice ``[start, start + width)`` of the encoded row.
    """

    column: str
    kind: SpanKind
    start: int
    width: int

    @property
    def stop(self) -> int:
        """End of the span (exclusive)."""
        return self.start + self.width


def mode_spans(spans: tuple[SpanInfo, ...] | list[SpanInfo]) -> dict[str, SpanInfo]:
    """The ``missing`` or ``atoms`` span of each numeric column that has one.

    Slot 0 of such a span is 1 exactly when the column's value slot holds a
    value (present, not at an atom): the only rows with a target for the value.
    """
    return {s.column: s for s in spans if s.kind in ("missing", "atoms")}


class TableTransformer:
    """Encode validated tables to float32 matrices and decode them back.

    Parameters
    ----------
    schema : Schema
        The public schema; the only input the transformer is built from.
    numeric_maps : dict of str to QuantileMap, optional
        Public quantile maps (fitted under DP) for some numeric columns; the
        others are min–max scaled. The layout does not depend on them.
    """

    def __init__(self, schema: Schema, numeric_maps: dict[str, QuantileMap] | None = None) -> None:
        self.schema = schema
        self.numeric_maps: dict[str, QuantileMap] = dict(numeric_maps or {})
        spans: list[SpanInfo] = []
        pos = 0
        for col in schema.columns:
            if col.kind == "categorical":
                width = len(col.categories) + (1 if col.nullable else 0)
                spans.append(SpanInfo(col.name, "categorical", pos, width))
                pos += width
            else:
                spans.append(SpanInfo(col.name, "numeric", pos, 1))
                pos += 1
                if col.atoms:
                    width = 1 + len(col.atoms) + (1 if col.nullable else 0)
                    spans.append(SpanInfo(col.name, "atoms", pos, width))
                    pos += width
                elif col.nullable:
                    spans.append(SpanInfo(col.name, "missing", pos, 2))
                    pos += 2
        self.spans: tuple[SpanInfo, ...] = tuple(spans)
        self.width = pos

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode a table already checked by :func:`shared.tables.validate_frame`.

        Returns
        -------
        numpy.ndarray
            ``float32`` array of shape ``(len(frame), self.width)``.
        """
        n = len(frame)
        out = np.zeros((n, self.width), dtype=np.float32)
        for span in self.spans:
            col = self.schema.column(span.column)
            values = frame[col.name]
            if span.kind == "categorical":
                out[np.arange(n), span.start + self._category_codes(col, values)] = 1.0
            elif span.kind == "numeric":
                x = values.to_numpy(dtype=np.float64, na_value=np.nan)
                scaled = np.nan_to_num(np.clip(self.scale(col, x), -1.0, 1.0), nan=0.0)
                out[:, span.start] = np.where(np.isin(x, col.atoms), 0.0, scaled)
            elif span.kind == "atoms":
                out[np.arange(n), span.start + self.mode_codes(col, values)] = 1.0
            else:
                is_missing = values.isna().to_numpy()
                out[np.arange(n), span.start + is_missing.astype(np.int64)] = 1.0
        return out

    @staticmethod
    def mode_codes(col: Column, values: pd.Series) -> np.ndarray:
        """Slot of each value in the column's ``atoms`` span.

        0 for a continuous value, ``1 + j`` for a value equal to atom ``j``, and
        ``1 + k`` (the last slot) for a missing value of a nullable column.
        """
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
        codes = np.zeros(len(x), dtype=np.int64)
        for j, atom in enumerate(col.atoms):
            codes[x == atom] = 1 + j
        codes[np.isnan(x)] = 1 + len(col.atoms)  # only nullable columns reach here with NaN
        return codes

    def scale(self, col: Column, x: np.ndarray) -> np.ndarray:
        """Numeric values in column units to encoded units ([-1, 1] within the bounds)."""
        qmap = self.numeric_maps.get(col.name)
        if qmap is not None:
            return qmap.forward(x)
        return 2.0 * (x - col.minimum) / (col.maximum - col.minimum) - 1.0

    def unscale(self, col: Column, u: np.ndarray) -> np.ndarray:
        """Encoded values (clipped to [-1, 1]) back to column units within the bounds."""
        qmap = self.numeric_maps.get(col.name)
        if qmap is not None:
            return qmap.inverse(u)
        x = (np.clip(u.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0
        return np.clip(col.minimum + x * (col.maximum - col.minimum), col.minimum, col.maximum)

    @staticmethod
    def _category_codes(col: Column, values: pd.Series) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(col.categories)}
        missing_code = len(col.categories)
        codes = values.map(lambda v: missing_code if v is None or v != v else lookup.get(v, -1))
        arr = codes.to_numpy(dtype=np.int64)
        if (arr < 0).any() or ((arr == missing_code).any() and not col.nullable):
            raise FedsynthError(
                f"column {col.name!r} holds values outside the schema; validate the table with "
                "shared.tables.load_table before encoding"
            )
        return arr

    def decode(self, encoded: np.ndarray) -> pd.DataFrame:
        """Turn encoded rows (one-hot spans, numeric values) back into a table.

        One-hot spans may hold probabilities or scores: the largest entry wins.
        Numeric values are clipped to [-1, 1] before unscaling, so every number
        lies within the schema bounds; integer columns are rounded.

        Returns
        -------
        pandas.DataFrame
            Columns in schema order with the schema's dtypes: ``object`` strings
            for categorical, ``Int64`` for integer, ``float64`` for continuous.
        """
        if encoded.ndim != 2 or encoded.shape[1] != self.width:
            raise FedsynthError(
                f"encoded rows have shape {encoded.shape}, expected (n, {self.width}) for "
                f"schema {self.schema.name!r}; the model was built for a different schema"
            )
        if np.isnan(encoded).any():
            raise FedsynthError(
                "the generator produced NaN values: training diverged. Lower the learning rate or "
                "the clip norm and train again; no table was written"
            )
        data: dict[str, pd.Series] = {}
        modes = {
            s.column: encoded[:, s.start : s.stop].argmax(axis=1)
            for s in self.spans
            if s.kind in ("missing", "atoms")
        }
        for span in self.spans:
            col = self.schema.column(span.column)
            block = encoded[:, span.start : span.stop]
            if span.kind == "categorical":
                idx = block.argmax(axis=1)
                labels = np.array([*col.categories, None], dtype=object)
                data[col.name] = pd.Series(labels[idx], dtype=object)
            elif span.kind == "numeric":
                data[col.name] = self._unscale(col, block[:, 0], modes.get(col.name))
        return pd.DataFrame(data, columns=self.schema.names)

    def _unscale(self, col: Column, scaled: np.ndarray, mode: np.ndarray | None) -> pd.Series:
        x = self.unscale(col, scaled)
        if col.kind == "integer":
            x = np.round(x)
        if mode is not None:
            # Slot 0 keeps the value; slots 1..k are the atoms; the last slot of a
            # nullable column (slot 1 of a [present, missing] span) is missing.
            points = np.array([np.nan, *col.atoms, np.nan])
            x = np.where(mode == 0, x, points[mode])
        if col.kind == "integer":
            return pd.Series(x, dtype="Int64")
        return pd.Series(x, dtype="float64")
