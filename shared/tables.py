"""Read a site's table and check it against the public schema.

:func:`load_table` reads CSV or Parquet, checks every column and every value,
collects all problems and raises one :class:`DataValidationError` that names the
file, each column, example lines and the fix. It runs before any training, so a
refused table costs no privacy budget and sends nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.errors import DataValidationError
from shared.schema import Column, Schema, category_text

# Spellings of "missing" accepted in CSV files (pandas' defaults, minus the
# ones that are plausible category names such as "None" or "NA" for a country).
MISSING_TOKENS = frozenset({"", "nan", "NaN", "NULL", "null", "#N/A", "N/A", "n/a", "<NA>"})
_EXAMPLES = 3

#: How every CSV is read: all cells as text (the schema, not pandas, decides types),
#: nothing silently turned into NaN, blank lines kept so line numbers stay the file's.
CSV_READ_OPTIONS: dict[str, Any] = {
    "dtype": str,
    "keep_default_na": False,
    "na_filter": False,
    "encoding": "utf-8",
    "index_col": False,
    "skip_blank_lines": False,
    "engine": "c",
}


def read_raw(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with every cell as text (or its Parquet type).

    Raises
    ------
    DataValidationError
        If the file is missing, empty, undecodable or has bad headers.
    """
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise DataValidationError(src, [f"file not found; check the path ({p.resolve()})"])
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(p)
        else:
            with warnings.catch_warnings():
                # A row with more fields than the header would otherwise shift values
                # silently into the wrong columns; make pandas' warning an error.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(p, **CSV_READ_OPTIONS)
    except pd.errors.EmptyDataError:
        raise DataValidationError(
            src, ["the file is empty; export the table with a header row"]
        ) from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            src, [f"is not UTF-8 text ({exc.reason} at byte {exc.start}); re-export it as UTF-8"]
        ) from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(
            src,
            [
                f"cannot be parsed as {suffix.lstrip('.') or 'CSV'} ({first}); check the "
                "delimiter (comma) and quoting"
            ],
        ) from None
    _check_headers(frame, src)
    if len(frame) == 0:
        raise DataValidationError(src, ["the table has a header but no rows; nothing to train on"])
    return frame


def _check_headers(frame: pd.DataFrame, src: str) -> None:
    problems: list[str] = []
    names = [str(c) for c in frame.columns]
    blank = [i + 1 for i, n in enumerate(names) if not n.strip() or n.startswith("Unnamed: ")]
    if blank:
        problems.append(f"header position(s) {blank} are blank; name every column")
    # pandas renames a repeated header "x" to "x.1"; catch both spellings.
    dupes = sorted(
        {n for n in names if names.count(n) > 1}
        | {
            n
            for n in names
            if "." in n and n.rsplit(".", 1)[0] in names and n.rsplit(".", 1)[1].isdigit()
        }
    )
    if dupes:
        problems.append(f"header(s) {dupes} appear more than once; each column must be named once")
    if problems:
        raise DataValidationError(src, problems)


def load_table(path: str | Path, schema: Schema) -> pd.DataFrame:
    """Read a table and validate it against ``schema``.

    Parameters
    ----------
    path : str or Path
        CSV (UTF-8, comma separated, header row) or Parquet file.
    schema : Schema
        The consortium's public schema.

    Returns
    -------
    pandas.DataFrame
        Columns in schema order: categorical columns as ``object`` strings
        (``None`` when missing), numeric columns as ``float64`` (``NaN`` when missing).

    Raises
    ------
    DataValidationError
        Listing every problem: missing or extra columns, unseen categories,
        out-of-range or non-numeric values, and missing values where the schema
        does not allow them.
    """
    raw = read_raw(path)
    return validate_frame(raw, schema, source=str(path))


def validate_frame(raw: pd.DataFrame, schema: Schema, *, source: str = "<table>") -> pd.DataFrame:
    """Validate an in-memory table (cells as text or typed) against ``schema``.

    See :func:`load_table` for the return value and errors.
    """
    problems: list[str] = []
    present = [str(c) for c in raw.columns]
    missing = [n for n in schema.names if n not in present]
    extra = [n for n in present if n not in schema.names]
    joined = [n for n in extra if any(sep in n for sep in (";", "\t", "|"))]
    if missing and joined:
        # One header holding the schema's names: the export used another delimiter.
        problems.append(
            f"the header {joined[0][:80]!r} looks like several column names joined by "
            "';', a tab or '|': re-export the table comma-separated (CSV), UTF-8"
        )
    elif missing:
        problems.append(
            f"column(s) {missing} required by the schema are missing; add them to the export "
            "(use an empty cell where a value is unknown and the column is nullable)"
        )
    if extra and not (missing and joined):
        problems.append(
            f"column(s) {extra} are not in the schema; drop them from the export (they may be "
            "identifying) or ask the consortium to add them to the schema"
        )
    out: dict[str, Any] = {}
    for col in schema.columns:
        if col.name not in present:
            continue
        try:
            out[col.name] = _check_column(raw[col.name], col, problems)
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. raw bytes in Parquet
            problems.append(
                f"column {col.name!r} holds values that cannot be read as {col.kind} "
                f"({type(exc).__name__}); export it as plain text or numbers"
            )
    if problems:
        raise DataValidationError(source, problems)
    frame = pd.DataFrame(out, columns=schema.names)
    _check_constraints(frame, schema, problems)
    if problems:
        raise DataValidationError(source, problems)
    return frame


def _check_constraints(frame: pd.DataFrame, schema: Schema, problems: list[str]) -> None:
    """A row breaking a declared constraint is a data error (or a schema too strict)."""
    for con in schema.constraints:
        bad = con.violations(frame)
        if not bad.any():
            continue
        shown = []
        for i in np.flatnonzero(bad)[:_EXAMPLES]:
            cells = ", ".join(f"{c}={frame[c].iloc[i]!r}" for c in dict.fromkeys(con.columns))
            shown.append(f"line {i + 2}: {cells}")
        problems.append(
            f"{int(bad.sum())} row(s) break the schema constraint {con.describe()} "
            f"({'; '.join(shown)}); correct those rows, or ask the consortium to correct the "
            "constraint"
        )


def _lines(mask: np.ndarray, values: pd.Series) -> str:
    """Format up to three offending cells as 'line N: value' (line 1 is the header)."""
    idx = np.flatnonzero(mask)[:_EXAMPLES]
    # A chunk of a larger file (shared.streaming) keeps the file's row numbers.
    index = values.index
    first = int(index.start) if isinstance(index, pd.RangeIndex) and index.step == 1 else 0
    shown = []
    for i in idx:
        text = str(values.iloc[i])
        shown.append(f"line {first + i + 2}: {text[:40]!r}" + ("…" if len(text) > 40 else ""))
    return ", ".join(shown)


def _missing_mask(series: pd.Series) -> np.ndarray:
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        text = series.astype(str).str.strip()
        mask = series.isna().to_numpy() | text.isin(MISSING_TOKENS).to_numpy()
        return np.asarray(mask, dtype=bool)
    return np.asarray(series.isna().to_numpy(), dtype=bool)


def _check_column(series: pd.Series, col: Column, problems: list[str]) -> pd.Series:
    where = f"column {col.name!r}"
    missing = _missing_mask(series)
    n_missing = int(missing.sum())
    if n_missing and not col.nullable:
        problems.append(
            f"{where}: {n_missing} missing value(s) ({_lines(missing, series)}) but the schema "
            "says it is not nullable; fill them in, drop those rows, or mark the column nullable"
        )
    if col.kind == "categorical":
        return _check_categorical(series, col, missing, problems)
    return _check_numeric(series, col, missing, problems)


def _check_categorical(
    series: pd.Series, col: Column, missing: np.ndarray, problems: list[str]
) -> pd.Series:
    text = series.map(category_text)
    allowed = set(col.categories)
    unseen = ~missing & ~text.isin(allowed).to_numpy()
    if unseen.any():
        values = sorted({str(v)[:40] for v in text[unseen]})
        problems.append(
            f"column {col.name!r}: {int(unseen.sum())} value(s) not in the schema's category list "
            f"(unseen: {values[:5]!r}; {_lines(unseen, series)}); recode them to one of "
            f"{list(col.categories)[:8]!r} or ask the consortium to add the category"
        )
    result = text.astype(object)
    result[missing] = None
    return result


def _check_numeric(
    series: pd.Series, col: Column, missing: np.ndarray, problems: list[str]
) -> pd.Series:
    where = f"column {col.name!r}"
    cleaned = series.where(~missing, None)
    numbers = pd.to_numeric(cleaned, errors="coerce").astype("float64")
    values = numbers.to_numpy()
    not_numeric = ~missing & np.isnan(values)
    if not_numeric.any():
        problems.append(
            f"{where}: {int(not_numeric.sum())} non-numeric value(s) ({_lines(not_numeric, series)}); "
            "the schema says this column is numeric: fix the cells or leave them empty if nullable"
        )
    finite = ~missing & ~not_numeric
    with np.errstate(invalid="ignore"):
        low = finite & (values < col.minimum)
        high = finite & (values > col.maximum)
    for mask, side, bound in (
        (low, "below the minimum", col.minimum),
        (high, "above the maximum", col.maximum),
    ):
        if mask.any():
            problems.append(
                f"{where}: {int(mask.sum())} value(s) {side} {_fmt(bound)} ({_lines(mask, series)}); "
                f"the schema allows {_fmt(col.minimum)}..{_fmt(col.maximum)}: correct the rows, "
                "or ask the consortium to widen the bound"
            )
    if col.kind == "integer":
        in_range = finite & ~low & ~high
        with np.errstate(invalid="ignore"):
            frac = in_range & (np.abs(values - np.round(values)) > 1e-9)
        if frac.any():
            problems.append(
                f"{where}: {int(frac.sum())} non-integer value(s) ({_lines(frac, series)}); "
                "round them or declare the column 'continuous'"
            )
    values = values.copy()
    values[missing] = np.nan
    return pd.Series(values, index=series.index, dtype="float64")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
