"""``fedsynth simulate --numeric-encoder dp-quantile``: the encoder stage through real Flower."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.accounting import epsilon_of
from shared.manifest import load_model
from shared.models.base import ENCODER_KEY
from tests.e2e import simulate_small

pytestmark = pytest.mark.slow


def test_simulate_fits_the_dp_encoder_charges_it_and_lands_on_epsilon(tmp_path: Path) -> None:
    # Execute: 2 sites, encoder stage, then 1 round of 5 DP steps; ε = 1 in total.
    out = tmp_path / "out"
    opts = ["--numeric-encoder", "dp-quantile", "--epsilon", "1", "--rounds", "1"]
    report = simulate_small(out, *opts, "--local-steps", "5", "--no-evaluate")
    # Assert: the run released a valid table from a model that carries the encoder.
    family, manifest = load_model(out / "model")
    assert manifest["model_settings"]["numeric_encoder"] == "dp-quantile"
    cdfs = family.state_dict()[ENCODER_KEY]
    assert cdfs.shape == (7, 65) and not (cdfs[:, 32] == 0.5).all()  # fitted, not uniform
    encoder = json.loads((out / "encoder.json").read_text())["info"]
    assert encoder["sites_sent"] == ["site-0", "site-1"]
    # Each ledger holds the release (σ_h, 1, 1) then the 5 steps, and lands on ε = 1.
    for site in ("site-0", "site-1"):
        ledger = json.loads((out / "sites" / site / "state" / "privacy_ledger.json").read_text())
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger["entries"]]
        assert history[0] == (encoder["noise_multiplier"], 1.0, 1) and history[1][2] == 5
        assert 0.98 <= epsilon_of(history, delta=1e-5) <= 1.0
    assert all(0.98 <= s["epsilon"] <= 1.0 for s in report["sites"])
