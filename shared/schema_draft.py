"""Draft a schema from a local table: a starting point for the consortium, never the schema.

The draft is read from private rows, so its category lists and bounds reveal real
values. It must be reviewed (bounds replaced with documented public ranges) and
agreed by the consortium before any training; :func:`draft_schema` warns loudly.
"""

from __future__ import annotations

import warnings
from typing import Any

from shared.schema import Column, Schema, category_text


class DraftSchemaWarning(UserWarning):
    """A schema was read from private rows and must be reviewed before use."""


def draft_schema(frame: Any, *, name: str = "table", source: str = "<table>") -> Schema:
    """Draft a schema from a local table, for the consortium to review and edit.

    The draft is read from private rows: its category lists and bounds reveal
    values that occur in the data. It is a starting point only. Never ship it
    unreviewed; round bounds out to documented clinical ranges first.

    Parameters
    ----------
    frame : pandas.DataFrame
        The local table.
    name : str
        Name recorded in the schema.
    source : str
        Where the table came from (shown in the warning).

    Returns
    -------
    Schema
        A valid schema covering every column of ``frame``.
    """
    import numpy as np
    import pandas as pd

    from shared.tables import MISSING_TOKENS

    warnings.warn(
        f"the draft schema was read from the private rows of {source}: its category lists and "
        "min/max reveal real values. Review it, replace bounds with documented public ranges, "
        "and have the consortium agree on it before any training.",
        DraftSchemaWarning,
        stacklevel=2,
    )
    columns: list[Column] = []
    for col_name in frame.columns:
        series = frame[col_name]
        missing = series.isna() | series.map(
            lambda v: isinstance(v, str) and v.strip() in MISSING_TOKENS
        )
        nullable = bool(missing.any())
        values = series[~missing]
        numeric = pd.to_numeric(values, errors="coerce")
        is_numeric = (
            len(values) > 0
            and not pd.api.types.is_bool_dtype(series)
            and numeric.notna().all()
            and values.astype(str).nunique() > 10
        )
        finite = numeric[np.isfinite(numeric.to_numpy(dtype=float))] if is_numeric else numeric
        if is_numeric and len(finite) < len(numeric):
            warnings.warn(
                f"column {col_name!r} of {source}: {len(numeric) - len(finite)} infinite "
                "value(s) left out of the drafted bounds; such cells fail validation, so fix "
                "them in the export",
                DraftSchemaWarning,
                stacklevel=2,
            )
            is_numeric = len(finite) > 0
        if is_numeric:
            numeric = finite
            is_int = bool((numeric == numeric.round()).all())
            lo, hi = float(numeric.min()), float(numeric.max())
            if hi <= lo:
                hi = lo + 1.0
            columns.append(
                Column(
                    str(col_name),
                    "integer" if is_int else "continuous",
                    minimum=lo,
                    maximum=hi,
                    nullable=nullable,
                )
            )
        else:
            cats = sorted({category_text(v) for v in values}) or ["missing"]
            columns.append(Column(str(col_name), "categorical", tuple(cats), nullable=nullable))
    return Schema(name=name, columns=tuple(columns))
