"""Schema constraints: parsing, contradictions, table validation, 0 violations by construction."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.cohort import cohort_schema
from shared.config import ModelSettings
from shared.constrained import truncated_normal
from shared.errors import DataValidationError, ModelError, SchemaError
from shared.models import GeneratorFamily, build_generator
from shared.models.vae import DPVAE
from shared.schema import Schema
from shared.tables import load_table, validate_frame

SCHEMA_FILE = Path(__file__).parent / "data" / "constrained_schema.json"
DOC: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
SCHEMA = Schema.from_dict(DOC, source=str(SCHEMA_FILE))
KINDS = ["range", "implies", "compare", "combinations"]


def _family(seed: int, gain: float) -> GeneratorFamily:
    """A random-init VAE; ``gain`` scales the weights to make its softmaxes peaky."""
    torch.manual_seed(seed)
    family = build_generator(SCHEMA, ModelSettings())
    with torch.no_grad():
        for p in family.module.parameters():
            p.mul_(gain)
    return family


def _with(*constraints: dict[str, Any], version: int = 2) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["fedsynth_schema_version"] = version
    doc["constraints"] = list(constraints)
    return doc


# ------------------------------------------------------------------ schema format
def test_version_1_schema_without_constraints_keeps_its_fingerprint() -> None:
    # Value printed by the main branch before constraints existed.
    old = "26dcc6b8c0dc554e801c19d6b7b40fa851f2f56740701fadf41f4f979a0c0a5d"
    assert cohort_schema().fingerprint() == old
    assert "constraints" not in cohort_schema().to_dict()


def test_constraints_round_trip_through_json() -> None:
    again = Schema.from_dict(json.loads(json.dumps(SCHEMA.to_dict())))
    assert again.constraints == SCHEMA.constraints
    assert again.fingerprint() == SCHEMA.fingerprint()
    assert SCHEMA.to_dict()["fedsynth_schema_version"] == 2
    assert [c.describe() for c in SCHEMA.constraints][1:5] == [
        'sex == "male" -> pregnant == "no"',
        "admission_day <= discharge_day",
        "systolic > diastolic",
        "dose_min < dose_max",
    ]


def test_constraints_need_version_2() -> None:
    with pytest.raises(SchemaError, match='need "fedsynth_schema_version": 2'):
        Schema.from_dict(_with(DOC["constraints"][0], version=1))


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        (
            [{"type": "compare", "left": "nope", "op": "<", "right": "weight"}],
            "'nope' is not a column",
        ),
        (
            [{"type": "implies", "if": {"weight": "1"}, "then": {"sex": "male"}}],
            "'weight' is continuous, but this constraint needs a categorical column",
        ),
        (
            [{"type": "compare", "left": "sex", "op": "<", "right": "weight"}],
            "'sex' is categorical, but this constraint needs a numeric",
        ),
        (
            [{"type": "implies", "if": {"sex": "male"}, "then": {"pregnant": "maybe"}}],
            r"\['maybe'\] not in the categories of 'pregnant'",
        ),
        (
            [
                {"type": "range", "column": "admission_day", "min": 200},
                {"type": "range", "column": "discharge_day", "max": 100},
                {"type": "compare", "left": "admission_day", "op": "<=", "right": "discharge_day"},
            ],
            "cannot satisfy admission_day <= discharge_day within the columns' bounds",
        ),
        (
            [{"type": "combinations", "columns": ["country", "city"], "allowed": [["fr", "rome"]]}],
            "'rome', which is not a category of 'city'",
        ),
        (
            [
                {"type": "implies", "if": {"sex": "female"}, "then": {"country": "fr"}},
                {"type": "implies", "if": {"sex": "female"}, "then": {"country": "uk"}},
            ],
            r"'sex' could never be \['female'\], yet the schema lists it",
        ),
        (
            [
                {
                    "type": "implies",
                    "if": {"country": ["fr", "uk", "de"]},
                    "then": {"city": "paris"},
                },
                {
                    "type": "combinations",
                    "columns": ["country", "city"],
                    "allowed": [["uk", "london"]],
                },
            ],
            "contradict each other: no row can satisfy them all",
        ),
        (
            [
                {"type": "compare", "left": "dose_min", "op": "<", "right": "dose_max"},
                {"type": "compare", "left": "dose_max", "op": "<", "right": "dose_min"},
            ],
            "go round in a circle",
        ),
        ([{"type": "range", "column": "weight", "min": 300}], "'weight' has no possible value"),
        ([{"type": "unique", "column": "sex"}], "'type' must be one of"),
        ([{"type": "compare", "left": "weight", "op": "==", "right": "systolic"}], "'op' must be"),
    ],
)
def test_bad_constraints_fail_at_schema_load(
    constraints: list[dict[str, Any]], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(_with(*constraints)), encoding="utf-8")
    with pytest.raises(SchemaError, match=message) as info:
        Schema.load(path)
    assert str(path) in str(info.value)  # names the schema file


@pytest.mark.parametrize(("op", "ok"), [(">", False), (">=", True)])
def test_integer_strictness_is_checked_against_bounds(op: str, ok: bool) -> None:
    doc = {
        "fedsynth_schema_version": 2,
        "columns": [
            {"name": "a", "type": "integer", "min": 0, "max": 5},
            {"name": "b", "type": "integer", "min": 5, "max": 10},
        ],
        "constraints": [{"type": "compare", "left": "a", "op": op, "right": "b"}],
    }
    if not ok:
        with pytest.raises(SchemaError, match=f"cannot satisfy a {op} b"):
            Schema.from_dict(doc)
        return
    rows = build_generator(Schema.from_dict(doc), ModelSettings()).sample(500, seed=1)
    assert (rows["a"] == 5).all() and (rows["b"] == 5).all()  # the only feasible pair


# ------------------------------------------------------------- table validation
def _valid_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sex": ["female", "male", "female"],
            "pregnant": ["yes", "no", None],
            "country": ["fr", "uk", "de"],
            "city": ["lyon", "london", "berlin"],
            "weight": [60.0, 80.0, 70.0],
            "admission_day": [3, 10, 20],
            "discharge_day": [5, 10, 21],
            "systolic": [120, 130, 110],
            "diastolic": [80, None, 70],
            "dose_min": [0.1, 0.2, 0.3],
            "dose_max": [0.2, 0.3, 0.4],
        }
    )


def test_rows_meeting_the_constraints_validate() -> None:
    assert len(validate_frame(_valid_rows(), SCHEMA)) == 3


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("weight", 30.0, "weight >= 35 and weight <= 180"),
        ("pregnant", "yes", 'sex == "male" -> pregnant == "no"'),
        ("admission_day", 11, "admission_day <= discharge_day"),
        ("systolic", 70, "systolic > diastolic"),
        ("city", "paris", "(country, city) in 4 allowed combination(s)"),
    ],
)
def test_a_row_breaking_a_constraint_is_a_data_error(column: str, value: Any, rule: str) -> None:
    rows = _valid_rows()
    rows.loc[1, column] = value
    rows.loc[0, "systolic"] = 70 if column == "systolic" else 120
    with pytest.raises(DataValidationError, match=re.escape(rule)) as info:
        validate_frame(rows, SCHEMA, source="site.csv")
    assert "line 3" in str(info.value) or "line 2" in str(info.value)
    assert "site.csv" in str(info.value)


# ------------------------------------------------------------ construction
@pytest.fixture(scope="module")
def big_sample() -> pd.DataFrame:
    return _family(seed=0, gain=5.0).sample(100_000, seed=3)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_violations_in_100k_rows_for_each_kind(big_sample: pd.DataFrame, kind: str) -> None:
    rules = [c for c in SCHEMA.constraints if c.to_dict()["type"] == kind]
    assert rules
    for rule in rules:
        assert int(rule.violations(big_sample).sum()) == 0, rule.describe()


def test_constrained_sample_survives_csv_and_validation(
    big_sample: pd.DataFrame, tmp_path: Path
) -> None:
    # Strict float comparisons use the next float; CSV must keep it exact.
    big_sample.iloc[:20_000].to_csv(tmp_path / "s.csv", index=False)
    assert len(load_table(tmp_path / "s.csv", SCHEMA)) == 20_000


def test_the_same_model_without_constraints_breaks_every_one() -> None:
    # Shows the 0-violation tests can fail: the constraints bind for this model.
    free = copy.deepcopy(DOC)
    del free["constraints"]
    torch.manual_seed(0)
    family = build_generator(Schema.from_dict(free), ModelSettings())
    family.load_state_dict(_family(seed=0, gain=5.0).state_dict())
    rows = family.sample(20_000, seed=3)
    for rule in SCHEMA.constraints:
        assert rule.violations(rows).sum() > 100, rule.describe()


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    gain=st.floats(0.1, 40.0),
    sample_seed=st.integers(0, 2**31 - 1),
)
def test_any_weights_give_zero_violations(seed: int, gain: float, sample_seed: int) -> None:
    rows = _family(seed, gain).sample(400, seed=sample_seed)
    for rule in SCHEMA.constraints:
        assert not rule.violations(rows).any(), rule.describe()
    validate_frame(rows, SCHEMA)


class _PointVAE(DPVAE):
    """Exposes only finished rows (the base-class default), like a family without probabilities."""

    def sample_distribution(self, n: int, generator: torch.Generator) -> Any:
        return GeneratorFamily.sample_distribution(self, n, generator)


class _AlwaysPregnantMen(_PointVAE):
    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        rows = super().sample_encoded(n, generator)
        sex = next(s for s in self.transformer.spans if s.column == "sex")
        preg = next(s for s in self.transformer.spans if s.column == "pregnant")
        rows[:, sex.start : sex.stop] = torch.tensor([0.0, 1.0])
        rows[:, preg.start : preg.stop] = torch.tensor([0.0, 1.0, 0.0])
        return rows


def test_point_family_rows_are_redrawn_until_they_meet_the_constraints() -> None:
    family = _PointVAE(SCHEMA, ModelSettings())
    rows = family.sample(5000, seed=1)
    assert len(rows) == 5000
    for rule in SCHEMA.constraints:
        assert not rule.violations(rows).any(), rule.describe()


def test_point_family_that_never_meets_a_constraint_fails_clearly() -> None:
    family = _AlwaysPregnantMen(SCHEMA, ModelSettings())
    with pytest.raises(ModelError, match="after 50 redraws the generator still produces rows"):
        family.sample(100, seed=1)


# ------------------------------------------------------------- truncated normal
@settings(max_examples=200, deadline=None)
@given(
    loc=st.floats(-1e6, 1e6),
    scale=st.floats(0.0, 1e6),
    lo=st.floats(-1e6, 1e6),
    width=st.floats(0.0, 1e6),
    u=st.floats(0.0, 1.0),
)
def test_truncated_normal_stays_inside_the_interval(
    loc: float, scale: float, lo: float, width: float, u: float
) -> None:
    x = truncated_normal(
        np.array([loc]), np.array([scale]), np.array([lo]), np.array([lo + width]), np.array([u])
    )
    assert lo <= x[0] <= lo + width


def test_truncated_normal_has_the_half_normal_mean() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    x = truncated_normal(np.zeros(n), np.ones(n), np.zeros(n), np.full(n, 1e9), rng.random(n))
    assert abs(x.mean() - math.sqrt(2 / math.pi)) < 0.01  # E|Z| = sqrt(2/pi)


def test_readme_example_rows_validate() -> None:
    rows = load_table(SCHEMA_FILE.parent / "constrained_rows.csv", SCHEMA)
    assert len(rows) == 3 and rows["diastolic"].isna().sum() == 1


_OPS = ["<", "<=", ">", ">="]


@st.composite
def _numeric_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Three numeric columns (integer or continuous, small random bounds) and 1-3 comparisons."""
    columns = []
    for i in range(3):
        lo = draw(st.integers(-4, 4))
        columns.append(
            {
                "name": f"x{i}",
                "type": draw(st.sampled_from(["integer", "continuous"])),
                "min": lo,
                "max": lo + draw(st.integers(1, 5)),
            }
        )
    pairs = draw(
        st.lists(
            st.sampled_from([(0, 1), (1, 2), (0, 2), (2, 0)]), min_size=1, max_size=3, unique=True
        )
    )
    constraints = [
        {"type": "compare", "left": f"x{a}", "op": draw(st.sampled_from(_OPS)), "right": f"x{b}"}
        for a, b in pairs
    ]
    return {"fedsynth_schema_version": 2, "columns": columns, "constraints": constraints}


def _has_cycle(constraints: list[dict[str, str]]) -> bool:
    """Whether the comparisons, as edges small -> big, go round (refused by design)."""
    edges = {
        (c["left"], c["right"]) if c["op"] in ("<", "<=") else (c["right"], c["left"])
        for c in constraints
    }
    closure = set(edges)
    for _ in range(3):
        closure |= {(a, d) for a, b in closure for c, d in closure if b == c}
    return any(a == b for a, b in closure)


@settings(max_examples=40, deadline=None)
@given(doc=_numeric_schemas(), seed=st.integers(0, 1000))
def test_comparison_chains_are_refused_exactly_when_impossible_and_otherwise_met(
    doc: dict[str, Any], seed: int
) -> None:
    try:
        schema = Schema.from_dict(doc)
    except SchemaError as exc:
        expected = "go round in a circle" if _has_cycle(doc["constraints"]) else "cannot satisfy"
        assert expected in str(exc)
        schema = None
    if all(c["type"] == "integer" for c in doc["columns"]):
        # Brute force over every integer row: is any row possible at all?
        grids = [range(c["min"], c["max"] + 1) for c in doc["columns"]]
        frame = pd.DataFrame(
            [(a, b, c) for a in grids[0] for b in grids[1] for c in grids[2]],
            columns=["x0", "x1", "x2"],
            dtype="float64",
        )
        ok = np.ones(len(frame), dtype=bool)
        for con in doc["constraints"]:
            left, right = frame[con["left"]], frame[con["right"]]
            ok &= {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[
                con["op"]
            ].to_numpy()
        if not _has_cycle(doc["constraints"]):
            assert (schema is not None) == bool(ok.any())
    if schema is not None:
        torch.manual_seed(seed)
        rows = build_generator(schema, ModelSettings()).sample(300, seed=seed)
        for rule in schema.constraints:
            assert not rule.violations(rows).any(), rule.describe()
