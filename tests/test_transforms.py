"""Unit tests for :mod:`shared.transforms`: the schema-only, invertible encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.cohort import generate_cohort
from shared.errors import DataValidationError, FedsynthError
from shared.schema import Schema
from shared.tables import validate_frame
from shared.transforms import SpanInfo, TableTransformer

# Every span kind, nullable and not: the layout below is written out by hand.
LAYOUT_SCHEMA = Schema.from_dict(
    {
        "fedsynth_schema_version": 1,
        "name": "layout",
        "columns": [
            {"name": "smoker", "type": "categorical", "categories": ["never", "former", "current"]},
            {"name": "age", "type": "integer", "min": 18, "max": 95},
            {"name": "bmi", "type": "continuous", "min": 15, "max": 60, "nullable": True},
            {"name": "sex", "type": "categorical", "categories": ["f", "m"], "nullable": True},
            {"name": "visits", "type": "integer", "min": 0, "max": 10, "nullable": True},
            {"name": "ldl", "type": "continuous", "min": -1.5, "max": 2.5},
        ],
    }
)


def _layout_frame() -> pd.DataFrame:
    raw = pd.DataFrame(
        {
            "smoker": ["never", "current", "former"],
            "age": [18, 95, 40],
            "bmi": [15.0, None, 37.5],
            "sex": ["m", None, "f"],
            "visits": [None, 10, 3],
            "ldl": [-1.5, 2.5, 0.5],
        }
    )
    return validate_frame(raw, LAYOUT_SCHEMA)


# ------------------------------------------------------------------------ layout
def test_span_layout_is_exact() -> None:
    # Execute
    transformer = TableTransformer(LAYOUT_SCHEMA)

    # Assert
    assert transformer.spans == (
        SpanInfo("smoker", "categorical", 0, 3),
        SpanInfo("age", "numeric", 3, 1),
        SpanInfo("bmi", "numeric", 4, 1),
        SpanInfo("bmi", "missing", 5, 2),
        SpanInfo("sex", "categorical", 7, 3),
        SpanInfo("visits", "numeric", 10, 1),
        SpanInfo("visits", "missing", 11, 2),
        SpanInfo("ldl", "numeric", 13, 1),
    )
    assert transformer.width == 14
    assert [s.stop for s in transformer.spans] == [3, 4, 5, 7, 10, 11, 13, 14]


def test_cohort_width(cohort: Schema) -> None:
    # 2 numeric-with-missing (3 each) + 5 numeric (1 each) + 2 + 3 + 6 * 2 one-hot widths.
    assert TableTransformer(cohort).width == 3 * 2 + 5 + 2 + 3 + 6 * 2


def test_encode_values_are_exact() -> None:
    # Prepare
    transformer = TableTransformer(LAYOUT_SCHEMA)

    # Execute
    encoded = transformer.encode(_layout_frame())

    # Assert
    assert encoded.dtype == np.float32
    expected = np.array(
        [
            # smoker   age   bmi  [p, m]  sex [f, m, -]  visits [p, m]  ldl
            [1, 0, 0, -1.0, -1.0, 1, 0, 0, 1, 0, 0.0, 0, 1, -1.0],
            [0, 0, 1, 1.0, 0.0, 0, 1, 0, 0, 1, 1.0, 1, 0, 1.0],
            [0, 1, 0, 2 * 22 / 77 - 1, 0.0, 1, 0, 1, 0, 0, -0.4, 1, 0, 0.0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(encoded, expected, atol=1e-6)


def test_encode_refuses_unvalidated_category() -> None:
    # Prepare
    frame = _layout_frame()
    frame.loc[0, "smoker"] = "daily"

    # Execute / Assert
    with pytest.raises(FedsynthError, match="column 'smoker' holds values outside the schema"):
        TableTransformer(LAYOUT_SCHEMA).encode(frame)


def test_decode_refuses_wrong_width() -> None:
    with pytest.raises(FedsynthError, match=r"shape \(2, 5\), expected \(n, 14\)"):
        TableTransformer(LAYOUT_SCHEMA).decode(np.zeros((2, 5), np.float32))


# -------------------------------------------------------------------- round trip
def test_round_trip_of_hand_written_table_is_exact() -> None:
    # Prepare
    frame = _layout_frame()
    transformer = TableTransformer(LAYOUT_SCHEMA)

    # Execute
    decoded = transformer.decode(transformer.encode(frame))

    # Assert
    assert decoded["smoker"].tolist() == ["never", "current", "former"]
    assert decoded["sex"].tolist() == ["m", None, "f"]
    assert decoded["age"].tolist() == [18, 95, 40]
    assert decoded["visits"].isna().tolist() == [True, False, False]
    assert decoded["visits"].dropna().tolist() == [10, 3]
    np.testing.assert_allclose(decoded["ldl"], [-1.5, 2.5, 0.5], atol=1e-6)
    assert decoded["bmi"].isna().tolist() == [False, True, False]


def test_cohort_round_trip(cohort: Schema) -> None:
    # Prepare
    frame = validate_frame(generate_cohort(400, seed=3), cohort)
    transformer = TableTransformer(cohort)

    # Execute
    decoded = transformer.decode(transformer.encode(frame))

    # Assert
    for col in cohort.columns:
        got, want = decoded[col.name], frame[col.name]
        if col.kind == "categorical":
            assert got.tolist() == want.tolist(), col.name
            continue
        assert got.isna().tolist() == want.isna().tolist(), col.name
        present = want.notna().to_numpy()
        error = np.abs(got.to_numpy(dtype=np.float64)[present] - want.to_numpy()[present])
        assert error.max() <= 1e-4 * (col.maximum - col.minimum), col.name
        if col.kind == "integer":
            assert got.dtype == "Int64"
            assert got.tolist() == want.astype("int64").tolist(), col.name


def test_decoded_cohort_validates(cohort: Schema) -> None:
    # Prepare
    frame = validate_frame(generate_cohort(100, seed=5), cohort)
    transformer = TableTransformer(cohort)

    # Execute
    again = validate_frame(transformer.decode(transformer.encode(frame)), cohort)

    # Assert
    assert again.shape == (100, 15)


def test_decode_takes_the_largest_score() -> None:
    # Prepare: probabilities, not one-hot vectors.
    transformer = TableTransformer(LAYOUT_SCHEMA)
    row = np.zeros((1, transformer.width), np.float32)
    row[0, 0:3] = [0.2, 0.3, 0.5]  # smoker -> current
    row[0, 5:7] = [0.6, 0.4]  # bmi present
    row[0, 7:10] = [0.1, 0.1, 0.8]  # sex -> missing
    row[0, 11:13] = [0.4, 0.6]  # visits missing

    # Execute
    decoded = transformer.decode(row)

    # Assert
    assert decoded.loc[0, "smoker"] == "current"
    assert decoded.loc[0, "bmi"] == 37.5
    assert decoded.loc[0, "sex"] is None
    assert pd.isna(decoded.loc[0, "visits"])


# ------------------------------------------------------------------- determinism
def test_two_transformers_from_one_schema_are_identical(cohort: Schema) -> None:
    # Prepare
    frame = validate_frame(generate_cohort(50, seed=11), cohort)
    first, second = TableTransformer(cohort), TableTransformer(cohort)

    # Execute / Assert
    assert first.spans == second.spans and first.width == second.width
    np.testing.assert_array_equal(first.encode(frame), second.encode(frame))


def test_encoding_does_not_depend_on_other_rows(cohort: Schema) -> None:
    # Prepare: no fitting, so a row encodes the same alone or among others.
    frame = validate_frame(generate_cohort(50, seed=11), cohort)
    transformer = TableTransformer(cohort)

    # Execute
    whole = transformer.encode(frame)
    alone = transformer.encode(frame.iloc[[7]].reset_index(drop=True))

    # Assert
    np.testing.assert_array_equal(whole[7:8], alone)


# -------------------------------------------------------------------- hypothesis
def _assert_inside_schema(decoded: pd.DataFrame, schema: Schema, n: int) -> None:
    assert list(decoded.columns) == schema.names and len(decoded) == n
    for col in schema.columns:
        values = decoded[col.name]
        missing = values.isna().to_numpy()
        if not col.nullable:
            assert not missing.any(), col.name
        present = values[~missing]
        if col.kind == "categorical":
            assert set(present) <= set(col.categories), col.name
            continue
        numbers = present.to_numpy(dtype=np.float64)
        assert ((numbers >= col.minimum) & (numbers <= col.maximum)).all(), col.name
        if col.kind == "integer":
            assert (numbers == np.round(numbers)).all(), col.name


_ROWS = st.integers(1, 8)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(_ROWS, st.just(14)),
        elements=st.floats(allow_nan=False, allow_infinity=True, width=32),
    )
)
def test_decode_of_any_scores_stays_inside_the_schema(encoded: np.ndarray) -> None:
    # Execute
    decoded = TableTransformer(LAYOUT_SCHEMA).decode(encoded)

    # Assert
    _assert_inside_schema(decoded, LAYOUT_SCHEMA, len(encoded))
    validate_frame(decoded, LAYOUT_SCHEMA)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_decode_of_random_cohort_rows_validates(cohort: Schema, n: int, seed: int) -> None:
    # Prepare
    transformer = TableTransformer(cohort)
    encoded = np.random.default_rng(seed).normal(0, 3, (n, transformer.width))

    # Execute
    decoded = transformer.decode(encoded)

    # Assert
    _assert_inside_schema(decoded, cohort, n)
    validate_frame(decoded, cohort)


def test_decode_of_nan_scores_never_breaks_the_schema() -> None:
    # Prepare
    transformer = TableTransformer(LAYOUT_SCHEMA)
    encoded = np.full((2, transformer.width), np.nan, np.float32)

    # Execute: refusing non-finite input is fine; a table that breaks the schema is not.
    try:
        decoded = transformer.decode(encoded)
    except FedsynthError:
        return

    # Assert
    try:
        validate_frame(decoded, LAYOUT_SCHEMA)
    except DataValidationError as exc:
        pytest.fail(f"decode returned a table outside the schema: {exc}")
