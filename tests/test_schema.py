"""Unit tests for :mod:`shared.schema`: validation, round trips, fingerprint, drafts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.cohort import generate_cohort
from shared.errors import SchemaError
from shared.schema import Column, Schema
from shared.schema_draft import DraftSchemaWarning, draft_schema
from shared.tables import validate_frame


def _doc(*columns: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"fedsynth_schema_version": 1, "name": "t", "columns": list(columns), **top}


CAT = {"name": "sex", "type": "categorical", "categories": ["female", "male"]}
INT = {"name": "age", "type": "integer", "min": 18, "max": 95}


# --------------------------------------------------------------------- valid input
def test_from_dict_builds_typed_columns(small_schema_doc: dict[str, Any]) -> None:
    # Execute
    schema = Schema.from_dict(small_schema_doc)

    # Assert
    assert schema.name == "small"
    assert schema.names == ["age", "sex", "bmi"]
    assert schema.column("age") == Column("age", "integer", minimum=18.0, maximum=95.0)
    assert schema.column("sex") == Column("sex", "categorical", ("female", "male"))
    assert schema.column("bmi") == Column(
        "bmi", "continuous", minimum=15.0, maximum=60.0, nullable=True
    )
    assert schema.roles == {}


def test_column_lookup_of_unknown_name_raises_key_error(small_schema: Schema) -> None:
    with pytest.raises(KeyError, match="'weight' is not in schema 'small'"):
        small_schema.column("weight")


def test_roles_are_parsed(cohort: Schema) -> None:
    assert cohort.roles == {"target": "mace", "treatment": "statin", "outcome": "ldl_12m"}


# -------------------------------------------------------------------- bad input
def test_all_problems_are_reported_at_once() -> None:
    # Prepare: four broken columns, each with a different problem.
    doc = _doc(
        {"name": "age", "type": "integer", "min": 90, "max": 10},
        {"name": "sex", "type": "categorical"},
        {"name": "bmi", "type": "decimal", "min": 1, "max": 2},
        {"name": "sbp", "type": "continuous", "min": "low", "max": 200},
    )

    # Execute
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(doc, source="cohort.json")

    # Assert
    err = info.value
    assert err.source == "cohort.json"
    assert len(err.problems) == 4
    message = str(err)
    assert "schema cohort.json is invalid (4 problem(s))" in message
    for column in ("'age'", "'sex'", "'bmi'", "'sbp'"):
        assert f"column {column}" in message


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (
            {"name": "age", "type": "integer", "min": 90, "max": 10},
            "column 'age': 'min' (90) must be below 'max' (10)",
        ),
        (
            {"name": "age", "type": "integer", "min": 5, "max": 5},
            "column 'age': 'min' (5) must be below 'max' (5)",
        ),
        (
            {"name": "age", "type": "integer", "min": 0.5, "max": 10},
            "column 'age': integer columns need integral bounds, got 0.5..10",
        ),
        (
            {"name": "age", "type": "integer", "max": 10},
            "column 'age': numeric columns need finite numbers 'min' and 'max'",
        ),
        (
            {"name": "age", "type": "continuous", "min": True, "max": 10},
            "column 'age': numeric columns need finite numbers 'min' and 'max'",
        ),
        (
            {"name": "age", "type": "continuous", "min": 0, "max": 1, "categories": ["a"]},
            "column 'age': numeric columns take 'min'/'max', not 'categories'",
        ),
        (
            {"name": "sex", "type": "categorical"},
            "column 'sex': 'categories' must be a non-empty list of strings",
        ),
        (
            {"name": "sex", "type": "categorical", "categories": []},
            "column 'sex': 'categories' must be a non-empty list of strings",
        ),
        (
            {"name": "sex", "type": "categorical", "categories": ["a", "a"]},
            "column 'sex': 'categories' has duplicates; list each once",
        ),
        (
            {"name": "sex", "type": "categorical", "categories": [1, 2]},
            "column 'sex': categories must be non-empty strings",
        ),
        (
            {"name": "sex", "type": "categorical", "categories": ["a"], "min": 0},
            "column 'sex': categorical columns take 'categories', not 'min'/'max'",
        ),
        (
            {"name": "sex", "type": "text", "categories": ["a"]},
            "column 'sex': 'type' must be one of ['categorical', 'integer', 'continuous'], "
            "got 'text'",
        ),
        (
            {"name": "sex", "type": "categorical", "categories": ["a"], "nullable": "yes"},
            "column 'sex': 'nullable' must be true or false, got 'yes'",
        ),
        (
            {"name": "grade", "type": "categorical", "categories": ["a", "b"], "ordered": "yes"},
            "column 'grade': 'ordered' must be true (categories listed lowest first) or false",
        ),
        (
            {"name": "age", "type": "integer", "min": 0, "max": 9, "ordered": True},
            "column 'age': 'ordered' describes a categorical column's list",
        ),
        (
            {"name": "sex", "type": "categorical", "categories": ["a"], "unit": "kg"},
            "column 'sex': unknown field(s) ['unit']; remove them",
        ),
        (
            {"name": "", "type": "categorical", "categories": ["a"]},
            "columns[0]: 'name' must be a non-empty string",
        ),
        ("age", "columns[0] must be an object, got str"),
    ],
)
def test_bad_column_is_explained(column: Any, expected: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(expected)):
        Schema.from_dict(_doc(column))


def test_duplicate_column_names_are_refused() -> None:
    expected = re.escape("column 'age' is listed twice; keep one entry")
    with pytest.raises(SchemaError, match=expected):
        Schema.from_dict(_doc(INT, CAT, INT))


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ({"exposure": "sex"}, "roles: unknown role 'exposure'"),
        ({"target": "weight"}, "roles: 'target' names 'weight', which is not a column"),
        ({"target": 3}, "roles: 'target' names 3, which is not a column"),
        (
            {"treatment": "age"},
            "roles: treatment column 'age' must be categorical with exactly two",
        ),
        (["target"], "'roles' must be an object mapping role to column, got list"),
    ],
)
def test_bad_roles_are_explained(roles: Any, expected: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(expected)):
        Schema.from_dict(_doc(INT, CAT, roles=roles))


def test_treatment_with_three_categories_is_refused() -> None:
    # Prepare
    smoker = {"name": "smoker", "type": "categorical", "categories": ["never", "former", "current"]}

    # Execute / Assert
    with pytest.raises(
        SchemaError,
        match="treatment column 'smoker' must be categorical with exactly two categories",
    ):
        Schema.from_dict(_doc(smoker, roles={"treatment": "smoker"}))


@pytest.mark.parametrize("doc", [[], "schema", 3, None])
def test_non_object_document_is_refused(doc: Any) -> None:
    with pytest.raises(SchemaError, match="top level must be a JSON object, got"):
        Schema.from_dict(doc)


@pytest.mark.parametrize("version", [None, 0, 3, "1"])
def test_wrong_version_is_refused(version: Any) -> None:
    # Prepare
    doc = _doc(INT)
    if version is None:
        del doc["fedsynth_schema_version"]
    else:
        doc["fedsynth_schema_version"] = version

    # Execute / Assert
    with pytest.raises(SchemaError, match=re.escape(f"must be 1 or 2 (got {version!r})")):
        Schema.from_dict(doc)


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"columns": []}, "'columns' must be a non-empty list of column objects"),
        ({"columns": {"age": INT}}, "'columns' must be a non-empty list of column objects"),
        ({"name": ""}, "'name' must be a non-empty string"),
        ({"owner": "x"}, "unknown top-level field(s) ['owner']; remove them"),
    ],
)
def test_bad_top_level_fields_are_explained(top: dict[str, Any], expected: str) -> None:
    # Prepare
    doc = {**_doc(INT), **top}

    # Execute / Assert
    with pytest.raises(SchemaError, match=re.escape(expected)):
        Schema.from_dict(doc)


def test_huge_integer_bound_is_a_schema_error() -> None:
    # Prepare: JSON integers have no size limit; 10**400 does not fit in a float.
    doc = _doc({"name": "age", "type": "integer", "min": 0, "max": 10**400})

    # Execute / Assert
    with pytest.raises(SchemaError, match="column 'age'"):
        Schema.from_dict(doc)


# ------------------------------------------------------------------------- files
def test_load_missing_file_names_the_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "nope.json"

    # Execute / Assert
    with pytest.raises(SchemaError, match=rf"(?s){re.escape(str(path))}.*file not found") as info:
        Schema.load(path)
    assert info.value.source == str(path)


def test_load_invalid_json_names_the_file_and_position(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "schema.json"
    path.write_text('{"fedsynth_schema_version": 1,\n "columns": [}', encoding="utf-8")

    # Execute / Assert
    expected = rf"(?s){re.escape(str(path))}.*is not valid JSON \(line 2"
    with pytest.raises(SchemaError, match=expected):
        Schema.load(path)


def test_load_non_utf8_file_is_a_schema_error(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "schema.json"
    path.write_bytes(b'{"name": "\xff"}')

    # Execute / Assert
    with pytest.raises(SchemaError, match=rf"(?s){re.escape(str(path))}.*cannot be read as UTF-8"):
        Schema.load(path)


def test_load_reports_problems_under_the_file_name(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(_doc({"name": "age", "type": "integer", "min": 9, "max": 1})))

    # Execute / Assert
    with pytest.raises(SchemaError, match=rf"schema {re.escape(str(path))} is invalid"):
        Schema.load(path)


def test_save_then_load_round_trips(tmp_path: Path, cohort: Schema) -> None:
    # Prepare
    path = tmp_path / "schema.json"

    # Execute
    cohort.save(path)
    loaded = Schema.load(path)

    # Assert
    assert loaded == cohort
    assert loaded.fingerprint() == cohort.fingerprint()


# -------------------------------------------------------------------- round trips
def test_to_dict_from_dict_round_trip(
    small_schema: Schema, small_schema_doc: dict[str, Any]
) -> None:
    # Execute
    doc = small_schema.to_dict()
    again = Schema.from_dict(doc)

    # Assert
    assert doc == small_schema_doc
    assert again == small_schema


def test_to_dict_writes_integer_bounds_as_ints(small_schema: Schema) -> None:
    age = small_schema.to_dict()["columns"][0]
    assert age == {"name": "age", "type": "integer", "min": 18, "max": 95}
    assert isinstance(age["min"], int)


# -------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_across_instances(cohort: Schema) -> None:
    # Prepare
    other = Schema.from_dict(json.loads(json.dumps(cohort.to_dict())))

    # Execute / Assert
    assert cohort.fingerprint() == other.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", cohort.fingerprint())


def test_fingerprint_ignores_key_order(
    small_schema: Schema, small_schema_doc: dict[str, Any]
) -> None:
    # Prepare
    shuffled = {k: small_schema_doc[k] for k in reversed(list(small_schema_doc))}

    # Execute / Assert
    assert Schema.from_dict(shuffled).fingerprint() == small_schema.fingerprint()


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["columns"][1].__setitem__("categories", ["female", "male", "other"]),
        lambda d: d["columns"][1].__setitem__("categories", ["male", "female"]),
        lambda d: d["columns"][0].__setitem__("max", 96),
        lambda d: d["columns"][2].__setitem__("nullable", False),
    ],
    ids=["category-added", "category-order", "bound", "nullable"],
)
def test_fingerprint_changes_with_the_schema(
    small_schema: Schema, small_schema_doc: dict[str, Any], edit: Any
) -> None:
    # Prepare
    doc = small_schema_doc
    edit(doc)

    # Execute / Assert
    assert Schema.from_dict(doc).fingerprint() != small_schema.fingerprint()


# -------------------------------------------------------------------------- draft
def test_draft_schema_warns_and_validates_its_own_table() -> None:
    # Prepare
    frame = generate_cohort(300, seed=1)

    # Execute
    with pytest.warns(DraftSchemaWarning, match="private rows"):
        draft = draft_schema(frame, name="draft", source="site.csv")
    validated = validate_frame(frame, draft)

    # Assert
    assert draft.names == list(frame.columns)
    assert draft.column("age").kind == "integer"
    assert draft.column("bmi").kind == "continuous" and draft.column("bmi").nullable
    assert draft.column("smoker").categories == ("current", "former", "never")
    assert len(validated) == 300
    assert Schema.from_dict(draft.to_dict()) == draft


def test_draft_schema_leaves_infinite_values_out_of_the_bounds_and_says_so() -> None:
    frame = pd.DataFrame({"x": [str(1.5 * i) for i in range(40)] + ["inf"]})

    with pytest.warns(DraftSchemaWarning, match=r"column 'x' of t\.csv: 1 infinite value"):
        draft = draft_schema(frame, name="d", source="t.csv")

    col = draft.column("x")
    assert col.kind == "continuous" and (col.minimum, col.maximum) == (0.0, 58.5)


@pytest.mark.parametrize(
    "values",
    [[0.0, 1.0, np.nan], [True, False, True], ["a", "", "b"]],
    ids=["float-coded", "bool", "empty-string"],
)
def test_draft_schema_validates_low_cardinality_columns(values: list[Any]) -> None:
    # Prepare
    frame = pd.DataFrame({"flag": values})

    # Execute
    with pytest.warns(DraftSchemaWarning):
        draft = draft_schema(frame)

    # Assert
    assert len(validate_frame(frame, draft)) == 3
    assert Schema.from_dict(draft.to_dict()) == draft


# --------------------------------------------------------------------- hypothesis
_names = st.text(min_size=1, max_size=12).filter(lambda s: bool(s.strip()))


@st.composite
def _column_docs(draw: st.DrawFn, name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["categorical", "integer", "continuous"]))
    col: dict[str, Any] = {"name": name, "type": kind}
    if kind == "categorical":
        col["categories"] = draw(st.lists(_names, min_size=1, max_size=5, unique=True))
    elif kind == "integer":
        lo = draw(st.integers(-(10**6), 10**6))
        col["min"], col["max"] = lo, lo + draw(st.integers(1, 10**6))
    else:
        a, b = draw(
            st.lists(
                st.floats(-1e12, 1e12, allow_nan=False), min_size=2, max_size=2, unique=True
            ).map(sorted)
        )
        col["min"], col["max"] = a, b
    if draw(st.booleans()):
        col["nullable"] = True
    if draw(st.booleans()):
        col["description"] = draw(st.text(min_size=1, max_size=20))
    return col


@st.composite
def _schema_docs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(_names, min_size=1, max_size=6, unique=True))
    columns = [draw(_column_docs(n)) for n in names]
    doc: dict[str, Any] = {"fedsynth_schema_version": 1, "name": draw(_names), "columns": columns}
    roles: dict[str, str] = {}
    if draw(st.booleans()):
        roles["target"] = draw(st.sampled_from(names))
    binary = [c["name"] for c in columns if len(c.get("categories", [])) == 2]
    if binary and draw(st.booleans()):
        roles["treatment"] = draw(st.sampled_from(binary))
    if roles:
        doc["roles"] = roles
    return doc


@settings(max_examples=60, deadline=None)
@given(_schema_docs())
def test_valid_schemas_round_trip_through_json(doc: dict[str, Any]) -> None:
    # Execute
    schema = Schema.from_dict(doc)
    again = Schema.from_dict(json.loads(json.dumps(schema.to_dict())))

    # Assert
    assert again == schema
    assert again.fingerprint() == schema.fingerprint()
    assert again.names == [c["name"] for c in doc["columns"]]


def test_ordered_categories_round_trip_and_leave_unordered_fingerprints_alone(
    small_schema_doc: dict[str, Any],
) -> None:
    before = Schema.from_dict(small_schema_doc).fingerprint()
    cat = next(c for c in small_schema_doc["columns"] if c["type"] == "categorical")
    cat["ordered"] = False
    assert Schema.from_dict(small_schema_doc).fingerprint() == before  # false is the default
    cat["ordered"] = True
    schema = Schema.from_dict(small_schema_doc)
    assert schema.column(cat["name"]).ordered
    assert schema.column(cat["name"]).to_dict()["ordered"] is True
    assert Schema.from_dict(schema.to_dict()) == schema
    assert schema.fingerprint() != before  # a different public model of the column
