"""Unit tests for :mod:`shared.tables`: reading and validating a site's table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import DataValidationError
from shared.schema import Schema
from shared.tables import load_table, validate_frame

HEADER = "age,sex,bmi\n"


def _csv(tmp_path: Path, text: str | bytes, name: str = "site.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _expect(path: Path, *parts: str) -> str:
    """Regex: the file path, then each part in order (across lines)."""
    return "(?s)" + ".*".join([re.escape(str(path)), *(re.escape(p) for p in parts)])


# ------------------------------------------------------------------- valid files
def test_valid_csv_gives_typed_frame(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    path = _csv(tmp_path, HEADER + "40,male,22.5\n50,female,\n")

    # Execute
    frame = load_table(path, small_schema)

    # Assert
    assert list(frame.columns) == ["age", "sex", "bmi"]
    assert frame.dtypes.to_dict() == {
        "age": np.dtype("float64"),
        "sex": np.dtype("O"),
        "bmi": np.dtype("float64"),
    }
    assert frame["age"].tolist() == [40.0, 50.0]
    assert frame["sex"].tolist() == ["male", "female"]
    assert frame["bmi"].iloc[0] == 22.5 and np.isnan(frame["bmi"].iloc[1])


def test_columns_are_returned_in_schema_order(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    path = _csv(tmp_path, "bmi,sex,age\n22,male,40\n")

    # Execute
    frame = load_table(path, small_schema)

    # Assert
    assert list(frame.columns) == ["age", "sex", "bmi"]
    assert frame.iloc[0].tolist() == [40.0, "male", 22.0]


def test_nullable_category_keeps_every_row(tmp_path: Path) -> None:
    # Prepare: pandas skips blank lines, so use a two-column file.
    schema = Schema.from_dict(
        {
            "fedsynth_schema_version": 1,
            "name": "t",
            "columns": [
                {"name": "id", "type": "integer", "min": 0, "max": 9},
                {"name": "sex", "type": "categorical", "categories": ["f", "m"], "nullable": True},
            ],
        }
    )
    path = _csv(tmp_path, "id,sex\n1,f\n2,\n3,NULL\n4,m\n")

    # Execute
    frame = load_table(path, schema)

    # Assert
    assert frame["sex"].tolist() == ["f", None, None, "m"]
    assert frame["sex"].dtype == np.dtype("O")


def test_parquet_round_trip(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    original = pd.DataFrame({"age": [40, 50], "sex": ["male", "female"], "bmi": [22.5, np.nan]})
    path = tmp_path / "site.parquet"
    original.to_parquet(path)

    # Execute
    frame = load_table(path, small_schema)

    # Assert
    expected = original.astype({"age": "float64", "sex": object})
    pd.testing.assert_frame_equal(frame, expected)


def test_validated_frame_is_stable_under_revalidation(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    frame = load_table(_csv(tmp_path, HEADER + "40,male,22.5\n50,female,\n"), small_schema)

    # Execute
    again = validate_frame(frame, small_schema)

    # Assert
    pd.testing.assert_frame_equal(again, frame)


# --------------------------------------------------------------------- bad files
@pytest.mark.parametrize(
    ("text", "parts"),
    [
        (
            "age,sex\n40,male\n",
            ["column(s) ['bmi'] required by the schema are missing", "add them to the export"],
        ),
        (
            "age,sex,bmi,ssn\n40,male,22,1\n",
            ["column(s) ['ssn'] are not in the schema", "drop them from the export"],
        ),
        (
            "age;sex;bmi\n40;male;22\n",
            ["header 'age;sex;bmi' looks like several column names", "comma-separated"],
        ),
        (
            HEADER + "40,other,22\n",
            ["column 'sex'", "unseen: ['other']", "line 2: 'other'", "recode them to one of"],
        ),
        (
            HEADER + "140,male,22\n",
            ["column 'age'", "above the maximum 95", "line 2: '140'", "widen the bound"],
        ),
        (
            HEADER + "10,male,22\n",
            ["column 'age'", "below the minimum 18", "line 2: '10'", "widen the bound"],
        ),
        (
            HEADER + "40,male,61.5\n",
            ["column 'bmi'", "above the maximum 60", "line 2: '61.5'", "widen the bound"],
        ),
        (
            HEADER + ",male,22\n",
            ["column 'age'", "1 missing value(s)", "not nullable", "fill them in"],
        ),
        (
            HEADER + "NaN,male,22\n",
            ["column 'age'", "missing value(s) (line 2: 'NaN')", "mark the column nullable"],
        ),
        (HEADER + "40,,22\n", ["column 'sex'", "missing value(s)", "fill them in"]),
        (
            HEADER + "forty,male,22\n",
            ["column 'age'", "non-numeric value(s) (line 2: 'forty')", "fix the cells"],
        ),
        (
            HEADER + "40.5,male,22\n",
            ["column 'age'", "non-integer value(s) (line 2: '40.5')", "round them or declare"],
        ),
    ],
    ids=[
        "missing-column",
        "extra-column",
        "semicolon-delimited",
        "unseen-category",
        "above-max",
        "below-min",
        "above-max-continuous",
        "empty-non-nullable",
        "nan-non-nullable",
        "empty-category",
        "non-numeric",
        "non-integer",
    ],
)
def test_bad_table_names_file_column_and_fix(
    tmp_path: Path, small_schema: Schema, text: str, parts: list[str]
) -> None:
    # Prepare
    path = _csv(tmp_path, text)

    # Execute
    with pytest.raises(DataValidationError, match=_expect(path, *parts)) as info:
        load_table(path, small_schema)

    # Assert
    assert info.value.source == str(path)
    assert len(info.value.problems) == 1
    assert "a site sends nothing and is not charged" in str(info.value)


@pytest.mark.parametrize(
    ("data", "parts"),
    [
        (b"", ["the file is empty", "export the table with a header row"]),
        (HEADER.encode(), ["the table has a header but no rows", "nothing to train on"]),
        (
            b"age,sex,bmi,age\n40,male,22,40\n",
            ["header(s) ['age.1'] appear more than once", "each column must be named once"],
        ),
        (b"age,,bmi\n40,male,22\n", ["header position(s) [2] are blank", "name every column"]),
        (b"age,sex,bmi\n40,m\xe9le,22\n", ["is not UTF-8 text", "re-export it as UTF-8"]),
        (b'age,sex,bmi\n40,"male,22\n', ["cannot be parsed as csv", "check the delimiter"]),
    ],
    ids=["empty-file", "header-only", "duplicate-header", "blank-header", "not-utf8", "bad-quote"],
)
def test_unreadable_file_is_explained(
    tmp_path: Path, small_schema: Schema, data: bytes, parts: list[str]
) -> None:
    # Prepare
    path = _csv(tmp_path, data)

    # Execute / Assert
    with pytest.raises(DataValidationError, match=_expect(path, *parts)):
        load_table(path, small_schema)


def test_missing_file_is_explained(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    path = tmp_path / "absent.csv"

    # Execute / Assert
    with pytest.raises(DataValidationError, match=_expect(path, "file not found")):
        load_table(path, small_schema)


def test_all_problems_are_listed_in_one_error(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare: every column is wrong in a different way.
    path = _csv(tmp_path, HEADER + "140,other,abc\n40,male,22\n41,male,x\n")

    # Execute
    with pytest.raises(DataValidationError) as info:
        load_table(path, small_schema)

    # Assert
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("column 'age': 1 value(s) above the maximum 95")
    assert problems[1].startswith("column 'sex': 1 value(s) not in the schema's category list")
    assert problems[2].startswith(
        "column 'bmi': 2 non-numeric value(s) (line 2: 'abc', line 4: 'x')"
    )
    assert f"table {path} does not match the schema (3 problem(s))" in str(info.value)


def test_missing_and_extra_columns_are_both_listed(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    path = _csv(tmp_path, "age,sex,weight\n40,male,80\n")

    # Execute
    with pytest.raises(DataValidationError) as info:
        load_table(path, small_schema)

    # Assert
    assert len(info.value.problems) == 2
    assert "['bmi']" in info.value.problems[0] and "['weight']" in info.value.problems[1]


def test_examples_are_capped_at_three(tmp_path: Path, small_schema: Schema) -> None:
    # Prepare
    path = _csv(tmp_path, HEADER + "".join(f"{100 + i},male,22\n" for i in range(5)))

    # Execute / Assert
    with pytest.raises(
        DataValidationError,
        match=re.escape(
            "5 value(s) above the maximum 95 (line 2: '100', line 3: '101', line 4: '102');"
        ),
    ):
        load_table(path, small_schema)


def test_rows_longer_than_the_header_are_refused(tmp_path: Path) -> None:
    # Prepare: two yes/no columns, rows with three fields; the shifted values still validate.
    schema = Schema.from_dict(
        {
            "fedsynth_schema_version": 1,
            "name": "t",
            "columns": [
                {"name": "a", "type": "categorical", "categories": ["no", "yes"]},
                {"name": "b", "type": "categorical", "categories": ["no", "yes"]},
            ],
        }
    )
    path = _csv(tmp_path, "a,b\nyes,no,yes\nno,no,no\n")

    # Execute / Assert
    with pytest.raises(DataValidationError, match=_expect(path)):
        load_table(path, schema)


# --------------------------------------------------------------------- hypothesis
_FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _load_or_refuse(path: Path, schema: Schema) -> None:
    try:
        frame = load_table(path, schema)
    except DataValidationError as exc:
        assert exc.source == str(path)
    else:
        assert list(frame.columns) == schema.names


@_FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_data_validation_error(
    tmp_path: Path, small_schema: Schema, data: bytes
) -> None:
    _load_or_refuse(_csv(tmp_path, data), small_schema)


@_FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_text_only_raises_data_validation_error(
    tmp_path: Path, small_schema: Schema, text: str
) -> None:
    _load_or_refuse(_csv(tmp_path, HEADER + text), small_schema)


_CELLS = st.sampled_from(
    [
        "age",
        "sex",
        "bmi",
        "40",
        "male",
        "",
        '"',
        ",",
        "age.1",
        "nan",
        "1e400",
        "-0",
        " ",
        "Unnamed: 0",
        "True",
        "60.0000001",
        "\r",
    ]
)


@_FUZZ
@given(rows=st.lists(st.lists(_CELLS, max_size=6), max_size=5))
def test_csv_like_text_only_raises_data_validation_error(
    tmp_path: Path, small_schema: Schema, rows: list[list[str]]
) -> None:
    _load_or_refuse(_csv(tmp_path, "\n".join(",".join(r) for r in rows)), small_schema)
