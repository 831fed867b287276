"""``fedsynth simulate`` on a schema with atoms: sites encode them, the release draws them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.manifest import load_model
from shared.tables import load_table
from tests.e2e import simulate_small
from tests.test_atoms import SCHEMA, _rows

pytestmark = pytest.mark.slow


def test_simulate_with_atoms_and_the_dp_quantile_encoder_releases_exact_atoms(
    tmp_path: Path,
) -> None:
    # Arrange: 600 rows where cost is exactly 0 for 40 % and limit mostly exactly 0 or 1
    data, schema_path, out = tmp_path / "rows.csv", tmp_path / "schema.json", tmp_path / "out"
    _rows(600, seed=7).to_csv(data, index=False)
    SCHEMA.save(schema_path)
    # Act: 2 sites through real Flower, DP histograms for the encoder, 1 round of 5 steps
    opts = ["--data", str(data), "--schema", str(schema_path), "--numeric-encoder", "dp-quantile"]
    simulate_small(out, *opts, "--rounds", "1", "--local-steps", "5", "--no-evaluate")
    # Assert: the released model keeps the atoms layout, the table holds atoms exactly
    family, _ = load_model(out / "model")
    assert [s.kind for s in family.transformer.spans if s.column == "limit"] == ["numeric", "atoms"]
    table = load_table(out / "synthetic.csv", SCHEMA)
    limit = table["limit"].to_numpy(dtype=np.float64)
    assert (table["cost"] == 0).any() and (limit == 0).any() and (limit == 1).any()
    assert ((table["cost"] > 0) & (table["cost"] < 100)).any()  # the continuous part too
