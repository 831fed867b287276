"""``fedsynth simulate --generator dp-ctgan``: the DP GAN through the real federation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.manifest import load_model
from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import independent_epsilon, run_cli

pytestmark = pytest.mark.slow


def test_simulate_trains_and_releases_the_dp_ctgan(tmp_path: Path) -> None:
    # Execute: 2 sites, 2 rounds of 4 DP steps each, on Flower's simulation engine.
    out = tmp_path / "out"
    res = run_cli(
        [
            "simulate",
            "--generator",
            "dp-ctgan",
            "--sites",
            "2",
            "--rounds",
            "2",
            "--local-steps",
            "4",
            "--epsilon",
            "1.0",
            "--synthetic-rows",
            "300",
            "--no-evaluate",
            "--out",
            str(out),
        ]
    )
    # Assert: a valid table, and each site charged exactly its 8 discriminator steps.
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    schema = Schema.load(out / "schema.json")
    assert len(load_table(out / "synthetic.csv", schema)) == 300
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["generator"] == "dp-ctgan"
    for site in report["sites"]:
        assert site["steps"] == 8
        sigma, q = site["noise_multiplier"], site["sample_rate"]
        expected = independent_epsilon([(sigma, q, 8)], site["delta"])
        assert site["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert site["epsilon"] <= 1.0 + 1e-9
    family, manifest = load_model(out / "model")
    assert family.name == "dp-ctgan" and manifest["model_settings"]["gan_uncond_rate"] == 0.5
    assert any(k.startswith("generator.") for k in family.state_dict())
