"""NHEFS loaded offline from the ``causaldata`` package (public observational data).

NHEFS is the NHANES I Epidemiologic Follow-up Study of the US National Center
for Health Statistics (NCHS). The ``causaldata`` package (PyPI, 0.1.5, MIT
licence, by N. Huntington-Klein) ships the cleaned extract that Hernán & Robins
use in *Causal Inference: What If* (chapters 12–13): 1,629 cigarette smokers
examined in 1971 and followed up in 1982. The standard question: what does
quitting smoking (``qsmk``) do to the weight change ``wt82_71``? The book's
IP-weighted and standardised estimates are about +3.4 to +3.5 kg.

Terms: NCHS public-use data may be used for statistical analysis only, and
users agree to make no attempt to learn the identity of any person. This
project therefore runs *no* privacy attacks (membership inference, distance to
closest record, exact matches) on NHEFS: only the causal comparison.

As in the book's analysis, the 63 rows with a missing outcome (no 1982 weight)
are dropped. The public schema is ``shared/data/nhefs_schema.json``, written by
hand from the codebook (see its ``description``), not inferred from the rows.
The package is located without being imported (its ``__init__`` imports
``statsmodels`` for every bundled data set), and the Stata file is read with pandas.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from shared.schema import Schema
from shared.tables import validate_frame
from simulations.package_data import packaged_file

SCHEMA_PATH = Path(str(resources.files("shared") / "data" / "nhefs_schema.json"))

# Codebook codes (nhefs_codebook) → the schema's category labels.
_CODES: dict[str, list[str]] = {
    "sex": ["male", "female"],
    "race": ["white", "black_or_other"],
    "education": [
        "",
        "8th_grade_or_less",
        "hs_dropout",
        "hs",
        "college_dropout",
        "college_or_more",
    ],
    "exercise": ["much", "moderate", "little_or_none"],
    "active": ["very_active", "moderately_active", "inactive"],
    "qsmk": ["no", "yes"],
}


def nhefs_schema() -> Schema:
    """The hand-written public schema of the NHEFS columns used here."""
    return Schema.load(SCHEMA_PATH)


def nhefs_file() -> Path:
    """Path of ``nhefs.dta`` inside the installed ``causaldata`` package."""
    return packaged_file(
        "causaldata",
        "nhefs/nhefs.dta",
        missing="NHEFS needs the 'causaldata' package (it ships the data offline): "
        "pip install causaldata==0.1.5",
    )


def load_nhefs() -> tuple[pd.DataFrame, Schema]:
    """NHEFS rows with an observed outcome, recoded and validated against the schema.

    Returns
    -------
    (DataFrame, Schema)
        1,566 rows (1,629 less the 63 with no 1982 weight) and the public schema.
    """
    schema = nhefs_schema()
    # Value labels on: the labels are the codebook's codes ("0", "1", ...).
    raw = pd.read_stata(nhefs_file())
    raw = raw[raw["wt82_71"].notna()].reset_index(drop=True)
    frame = pd.DataFrame(index=raw.index)
    for col in schema.columns:
        values = raw[col.name]
        if col.name in _CODES:
            labels = _CODES[col.name]
            frame[col.name] = [labels[int(float(str(v)))] for v in values]
        else:
            frame[col.name] = pd.to_numeric(values).astype(float)
    for name in ("age", "smokeintensity", "smokeyrs"):
        frame[name] = frame[name].round().astype("int64")
    return validate_frame(frame.astype(object), schema, source=str(nhefs_file())), schema
