"""Canary records for the one-run audit, and their secret inclusion coin flips.

A canary is a schema-valid record that is unlike the site's rows and unlike the
other canaries: every numeric column is drawn uniformly over its documented
public range (so joint values are far from the correlated real rows) and every
categorical column uniformly over its categories. Nullable columns are never
missing, so each canary carries its whole signal. Canaries are built from the
public schema only; they never copy a real row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shared.errors import AuditError
from shared.schema import Schema
from shared.tables import validate_frame

#: Fewest canaries the audit accepts: fewer cannot reject any useful ε at 95%.
MIN_CANARIES = 20


def make_canaries(schema: Schema, m: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw ``m`` distinct canary records valid against ``schema``.

    Parameters
    ----------
    schema : Schema
        The public schema (the only input: no real row is read).
    m : int
        Number of canaries.
    rng : numpy.random.Generator
        The auditor's randomness.

    Returns
    -------
    pandas.DataFrame
        ``m`` validated rows with the schema's columns and dtypes.
    """
    if m < MIN_CANARIES:
        raise AuditError(
            f"--canaries {m} is too few: fewer than {MIN_CANARIES} cannot reject any useful ε "
            "at 95% confidence; use 1000 (the default) or more"
        )
    columns: dict[str, np.ndarray] = {}
    for col in schema.columns:
        if col.kind == "categorical":
            columns[col.name] = rng.choice(np.array(col.categories, dtype=object), m)
        else:
            values = rng.uniform(col.minimum, col.maximum, m)
            # Round inside the bounds (np.round could step past a bound at .5).
            values = np.round(values) if col.kind == "integer" else np.round(values, 4)
            columns[col.name] = np.clip(values, col.minimum, col.maximum)
    frame = pd.DataFrame(columns).astype(object)
    canaries = validate_frame(frame, schema, source="audit canaries")
    if canaries.duplicated().any():
        raise AuditError(
            "two canaries coincide (the schema has too few distinct records); use fewer --canaries"
        )
    return canaries


def draw_inclusion(m: int, rng: np.random.Generator) -> np.ndarray:
    """Independent fair coin flips: ``True`` means the canary joins the training set."""
    return rng.random(m) < 0.5
