"""``fedsynth simulate --generator staged``: the staged family through the real federation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.manifest import load_model
from tests.e2e import simulate_small

pytestmark = pytest.mark.slow


def test_simulate_trains_and_releases_the_staged_generator(tmp_path: Path) -> None:
    # Execute: 2 sites, 1 round of 5 DP steps each, on Flower's simulation engine.
    out = tmp_path / "out"
    report = simulate_small(out, "--generator", "staged", "--rounds", "1", "--local-steps", "5")
    # Assert: DP-SGD's 5 steps, then one effect release, together within ε = 3 per site.
    assert report["generator"] == "staged"
    assert all(site["steps"] == 5 + 1 and site["epsilon"] <= 3.0 for site in report["sites"])
    assert all(site["epsilon"] > 2.9 for site in report["sites"])
    effect = report["effect_calibration"]
    assert effect["enabled"] and effect["budget_fraction"] == 0.2
    saved = json.loads((out / "effect.json").read_text())["info"]
    assert saved["sites_sent"] == ["site-0", "site-1"]
    assert saved["generator_effect_after"] == pytest.approx(saved["estimate"], abs=0.05)
    assert saved["generator_shares_after"] == pytest.approx(saved["treatment_shares"], abs=1e-3)
    assert effect["treatment_shares"] == saved["treatment_shares"]
    family, manifest = load_model(out / "model")
    assert family.name == "staged" and manifest["model_settings"]["covariate_generator"] == "dp-vae"
    causal = json.loads((out / "evaluation" / "report.json").read_text())["causal"]
    assert causal["synthetic"]["status"] == "ok"
