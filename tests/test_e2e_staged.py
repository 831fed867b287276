"""``fedsynth simulate --generator staged``: the staged family through the real federation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.manifest import load_model
from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import run_cli

pytestmark = pytest.mark.slow


def test_simulate_trains_and_releases_the_staged_generator(tmp_path: Path) -> None:
    # Execute: 2 sites, 1 round of 5 DP steps each, on Flower's simulation engine.
    out = tmp_path / "out"
    res = run_cli(
        [
            "simulate",
            "--generator",
            "staged",
            "--sites",
            "2",
            "--rounds",
            "1",
            "--local-steps",
            "5",
            "--synthetic-rows",
            "300",
            "--out",
            str(out),
        ]
    )
    # Assert
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    schema = Schema.load(out / "schema.json")
    assert len(load_table(out / "synthetic.csv", schema)) == 300
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["generator"] == "staged"
    assert all(site["steps"] == 5 and site["epsilon"] <= 3.0 for site in report["sites"])
    family, manifest = load_model(out / "model")
    assert family.name == "staged" and manifest["model_settings"]["covariate_generator"] == "dp-vae"
    causal = json.loads((out / "evaluation" / "report.json").read_text())["causal"]
    assert causal["synthetic"]["status"] == "ok"
