"""A constrained schema end to end: sites validate the rules, the release meets them, and
``fedsynth sample --condition`` draws from the released model (real Flower, real Opacus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import run_cli

pytestmark = pytest.mark.slow
SCHEMA_FILE = Path(__file__).parent / "data" / "constrained_schema.json"


def _rows(n: int, seed: int) -> pd.DataFrame:
    """A table meeting every constraint of the test schema."""
    rng = np.random.default_rng(seed)
    male = rng.random(n) < 0.5
    pregnant = np.where(male, "no", np.where(rng.random(n) < 0.2, "yes", "no")).astype(object)
    pregnant[rng.random(n) < 0.1] = ""
    pairs = np.array([("fr", "paris"), ("fr", "lyon"), ("uk", "london"), ("de", "berlin")])
    pick = pairs[rng.integers(0, 4, n)]
    admit = rng.integers(0, 300, n)
    systolic = rng.integers(100, 170, n)
    diastolic = (systolic - rng.integers(20, 60, n)).astype(object)
    diastolic[rng.random(n) < 0.1] = ""
    dose_min = rng.uniform(0, 0.5, n)
    return pd.DataFrame(
        {
            "sex": np.where(male, "male", "female"),
            "pregnant": pregnant,
            "country": pick[:, 0],
            "city": pick[:, 1],
            "weight": np.round(rng.uniform(40, 150, n), 1),
            "admission_day": admit,
            "discharge_day": admit + rng.integers(0, 30, n),
            "systolic": systolic,
            "diastolic": diastolic,
            "dose_min": np.round(dose_min, 3),
            "dose_max": np.round(dose_min + rng.uniform(0.01, 0.5, n), 3),
        }
    )


def test_constrained_schema_through_simulation_release_and_conditional_sample(
    tmp_path: Path,
) -> None:
    schema = Schema.load(SCHEMA_FILE)
    data = tmp_path / "rows.csv"
    _rows(1200, seed=1).to_csv(data, index=False)
    load_table(data, schema)  # the generated table meets the constraints
    out = tmp_path / "out"

    res = run_cli(
        [
            "simulate",
            "--data",
            str(data),
            "--schema",
            str(SCHEMA_FILE),
            "--sites",
            "2",
            "--rounds",
            "1",
            "--local-steps",
            "3",
            "--synthetic-rows",
            "3000",
            "--epsilon",
            "3",
            "--no-evaluate",
            "--out",
            str(out),
        ]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    released = load_table(out / "synthetic.csv", schema)  # re-validates every constraint
    assert len(released) == 3000
    for rule in schema.constraints:
        assert not rule.violations(released).any(), rule.describe()

    more = tmp_path / "pregnant.csv"
    res = run_cli(
        [
            "sample",
            "--model",
            str(out / "model"),
            "--n",
            "2000",
            "--condition",
            "pregnant=yes",
            "--rebalance",
            "country",
            "--out",
            str(more),
        ]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = load_table(more, schema)
    assert (rows["pregnant"] == "yes").all() and (rows["sex"] == "female").all()
    assert sorted(rows["country"].value_counts().tolist()) == [666, 667, 667]
