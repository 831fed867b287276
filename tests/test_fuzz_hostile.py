"""Hostile and malformed input: property-based fuzzing of the table loader and schema parser.

Every generated input must end in a fedsynth error (a :class:`FedsynthError`
naming the file) or, for the few schema mutations that happen to stay valid, in a
valid result: never another exception (which the CLI would show as a traceback).
Bad tables sent through the real ClientApp handler must never touch the ledger.
The number of generated inputs is printed at the end of the pytest run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.app import handle_train
from shared import keys
from shared.config import ModelSettings, RunSettings
from shared.errors import DataValidationError, FedsynthError, SchemaError
from shared.models import build_generator
from shared.schema import Column, Schema
from shared.tables import load_table
from tests.fuzzing import count

SCHEMA_DOC: dict[str, Any] = {
    "fedsynth_schema_version": 1,
    "name": "fuzz",
    "columns": [
        {"name": "age", "type": "integer", "min": 18, "max": 95},
        {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
        {"name": "bmi", "type": "continuous", "min": 15, "max": 60},
    ],
}
SCHEMA = Schema.from_dict(SCHEMA_DOC)  # every column non-nullable: a blank cell is a defect


def _fuzz(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# ------------------------------------------------------------------- hostile tables
NUMERIC_DEFECTS = ["inf", "-inf", "Infinity", "1e400", "1e308", "-1e308", "NaN", "nan", ""]
NUMERIC_DEFECTS += ["abc", "12abc", "0x1F", "True", "--5", "1,5", "1e-400x"]
CATEGORY_DEFECTS = ["Male", "FEMALE", "", "NaN", "12", "None", "null", "female\x00", "fémale"]


def valid_cell(col: Column) -> st.SearchStrategy[str]:
    if col.kind == "categorical":
        return st.sampled_from(col.categories)
    if col.kind == "integer":
        return st.integers(int(col.minimum), int(col.maximum)).map(str)
    return st.floats(col.minimum, col.maximum).map(repr)


def bad_cell(col: Column) -> st.SearchStrategy[str]:
    if col.kind == "categorical":
        giant = st.builds(lambda c, n: c * n, st.characters(), st.integers(10_000, 300_000))
        return st.one_of(st.sampled_from(CATEGORY_DEFECTS), giant)
    # Out of range for *this* column (a value out of one column's range may fit another's).
    out_of_range = [
        repr(col.maximum + 1),
        repr(col.minimum - 0.01),
        repr(col.minimum - 1) if col.kind == "integer" else repr(col.maximum * 1.001),
    ]
    return st.sampled_from(NUMERIC_DEFECTS + out_of_range)


DEFECTS = [
    "bad cell",
    "duplicate header",
    "blank header",
    "missing column",
    "wrong delimiter",
    "ragged row",
    "invalid utf-8",
    "utf-16",
    "latin-1",
    "header only",
]


@st.composite
def hostile_table(draw: st.DrawFn, schema: Schema = SCHEMA) -> tuple[str, bytes]:
    """A CSV with at least one defect (named first), plus random extra noise."""
    defect = draw(st.sampled_from(DEFECTS))
    cols = list(schema.columns)
    header = [c.name for c in cols]
    rows = [[draw(valid_cell(c)) for c in cols] for _ in range(draw(st.integers(1, 4)))]
    r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(cols) - 1))
    delimiter, encoding = ",", "utf-8"
    if defect == "bad cell":
        rows[r][c] = draw(bad_cell(cols[c]))
    elif defect == "duplicate header":
        header.append(header[c])
        rows = [[*row, row[c]] for row in rows]
    elif defect == "blank header":
        header.insert(c, draw(st.sampled_from(["", " ", "\t"])))
        rows = [[*row[:c], draw(valid_cell(cols[c])), *row[c:]] for row in rows]
    elif defect == "missing column":
        header.pop(c)
        rows = [row[:c] + row[c + 1 :] for row in rows]
    elif defect == "wrong delimiter":
        delimiter = draw(st.sampled_from([";", "\t", "|", " "]))
    elif defect == "ragged row":
        rows[r].append(draw(valid_cell(cols[c])))
    elif defect == "utf-16":
        encoding = draw(st.sampled_from(["utf-16", "utf-32"]))
    elif defect == "latin-1":
        encoding = "latin-1"
        rows[r][c] = draw(st.sampled_from(["é", "ß", "±", "µ"])) + rows[r][c]
    elif defect == "header only":
        rows = []
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    data = buf.getvalue().encode(encoding)
    if defect == "invalid utf-8":
        cut = draw(st.integers(0, len(data)))
        data = (
            data[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + data[cut:]
        )
    return defect, data


@_fuzz(1000)
@given(case=hostile_table())
def test_every_hostile_table_is_refused_with_a_message_naming_the_file(
    tmp_path: Path, case: tuple[str, bytes]
) -> None:
    defect, data = case
    path = tmp_path / "site.csv"
    path.write_bytes(data)

    with pytest.raises(DataValidationError) as info:
        load_table(path, SCHEMA)
    count("table loader")

    assert str(path) in str(info.value), defect
    assert "a site sends nothing and is not charged" in str(info.value)


HOSTILE_VALUES = st.one_of(
    st.sampled_from([np.inf, -np.inf, np.nan, 1e308, -1e308, 2**62, -(2**62)]),
    st.booleans(),
    st.text(max_size=20),
    st.binary(max_size=10),
    st.none(),
)


@_fuzz(100)
@given(
    column=st.sampled_from(SCHEMA.names), values=st.lists(HOSTILE_VALUES, min_size=1, max_size=5)
)
def test_hostile_parquet_columns_are_refused_or_valid(
    tmp_path: Path, column: str, values: list[Any]
) -> None:
    frame = pd.DataFrame({"age": [40] * len(values), "sex": ["male"] * len(values)})
    frame["bmi"] = [25.0] * len(values)
    frame[column] = pd.Series(values, dtype=object)
    path = tmp_path / "site.parquet"
    try:
        frame.to_parquet(path)
    except (ValueError, TypeError, OverflowError, ArithmeticError, ImportError):
        # pyarrow cannot even store this mix; a hospital cannot send such a file.
        frame[column] = frame[column].map(repr)
        frame.to_parquet(path)

    try:
        loaded = load_table(path, SCHEMA)
    except DataValidationError as exc:
        assert str(path) in str(exc)
        count("table loader (parquet)")
    else:
        assert list(loaded.columns) == SCHEMA.names
        count("table loader (parquet)", accepted=True)


# ----------------------------------------------------------------- hostile schemas
JSON_JUNK = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.sampled_from([10**400, "x" * 5000, "", " ", "categorical", "integer"]),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
REQUIRED = ["fedsynth_schema_version", "columns"]
COLUMN_FIELDS = ["name", "type", "categories", "min", "max", "nullable", "description", "bogus"]


@st.composite
def hostile_schema_doc(draw: st.DrawFn) -> Any:
    """The valid document with 1-3 of: a field set to junk, a field dropped, a column repeated."""
    doc = json.loads(json.dumps(SCHEMA_DOC))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["junk top", "junk column", "drop", "repeat", "swap"]))
        cols = doc.get("columns")
        i = draw(st.integers(0, 2))
        has_col = isinstance(cols, list) and i < len(cols) and isinstance(cols[i], dict)
        if action == "junk top":
            doc[draw(st.sampled_from([*REQUIRED, "name", "roles", "extra"]))] = draw(JSON_JUNK)
        elif action == "junk column" and has_col:
            cols[i][draw(st.sampled_from(COLUMN_FIELDS))] = draw(JSON_JUNK)
        elif action == "drop" and has_col:
            cols[i].pop(draw(st.sampled_from(COLUMN_FIELDS)), None)
        elif action == "drop":
            doc.pop(draw(st.sampled_from(REQUIRED)), None)
        elif action == "repeat" and has_col:
            cols.append(json.loads(json.dumps(cols[i])))
        elif action == "swap":
            return draw(st.one_of(st.just(doc.get("columns")), JSON_JUNK))
    return doc


def _parse_or_refuse(path: Path, target: str) -> None:
    try:
        schema = Schema.load(path)
    except SchemaError as exc:
        assert str(path) in str(exc) and exc.problems
        count(target)
    else:
        assert schema.columns, "a schema without columns was accepted"
        count(target, accepted=True)


@_fuzz(500)
@given(doc=hostile_schema_doc())
def test_hostile_schema_documents_are_refused_or_valid(tmp_path: Path, doc: Any) -> None:
    path = tmp_path / "schema.json"
    # allow_nan: Python writes NaN/Infinity, which its json module also reads back.
    path.write_text(json.dumps(doc), encoding="utf-8")
    _parse_or_refuse(path, "schema parser")


RAW_SCHEMA_TEXT = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(["[", '{"columns": [', "NaN", "1" * 5000, "[" * 100_000, "{}" * 3]).map(
        str.encode
    ),
    st.builds(lambda d: json.dumps(SCHEMA_DOC)[:d].encode(), st.integers(0, 200)),
    st.just("\ufeff" + json.dumps(SCHEMA_DOC)).map(lambda s: s.encode("utf-16")),
)


@_fuzz(400)
@given(data=RAW_SCHEMA_TEXT)
def test_hostile_schema_files_are_refused_or_valid(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "schema.json"
    path.write_bytes(data)
    _parse_or_refuse(path, "schema parser (raw bytes)")


# ------------------------------------------------------- through the real ClientApp
@cache
def _train_content() -> RecordDict:
    torch.manual_seed(0)
    model = build_generator(SCHEMA, ModelSettings())
    run = RunSettings(rounds=1, local_steps=2, epsilon=1.0, schema_path="x", out_dir="y")
    train = run.train_settings(
        1, noise_multiplier=run.noise_multiplier(), schema_fingerprint=SCHEMA.fingerprint()
    )
    return RecordDict(
        {
            keys.GLOBAL_ARRAYS: ArrayRecord(model.state_dict()),
            keys.TRAIN_CONFIG: ConfigRecord(train.to_config()),
        }
    )


@pytest.fixture
def task_identity() -> Iterator[None]:
    """The identity Flower sets in a real ClientApp process."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 3
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None  # type: ignore[assignment]


@_fuzz(100)
@given(case=hostile_table())
def test_hostile_tables_through_the_client_app_never_touch_the_ledger(
    tmp_path: Path, task_identity: None, case: tuple[str, bytes]
) -> None:
    (tmp_path / "site.csv").write_bytes(case[1])
    SCHEMA.save(tmp_path / "schema.json")
    state = tmp_path / "state"
    node = {
        "data-path": str(tmp_path / "site.csv"),
        "schema-path": str(tmp_path / "schema.json"),
        "state-dir": str(state),
        "site-name": "h",
        "budget-epsilon": 5.0,
        "device": "cpu",
    }
    ctx = Context(run_id=7, node_id=3, node_config=node, state=RecordDict(), run_config={})

    msg = Message(content=_train_content(), dst_node_id=3, message_type="train")

    reply = handle_train(msg, ctx)

    info = reply.content[keys.SITE_INFO]
    assert info[keys.STATUS] == keys.STATUS_DECLINED
    assert "failed schema validation" in str(info[keys.REASON]), info[keys.REASON]
    assert keys.UPDATE_ARRAYS not in reply.content
    assert not (state / "privacy_ledger.json").exists()
    assert not (state / "last_update.json").exists()
    count("ClientApp round")


def test_fedsynth_error_is_the_root_of_the_refusals() -> None:
    # The CLI prints a FedsynthError as one message; the refusals above must be of it.
    assert issubclass(DataValidationError, FedsynthError)
    assert issubclass(SchemaError, FedsynthError)
