"""``fedsynth simulate --generator dp-ctgan``: the DP GAN through the real federation."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.manifest import load_model
from tests.e2e import independent_epsilon, simulate_small

pytestmark = pytest.mark.slow


def test_simulate_trains_and_releases_the_dp_ctgan(tmp_path: Path) -> None:
    # Execute: 2 sites, 2 rounds of 4 DP steps each, on Flower's simulation engine.
    out = tmp_path / "out"
    opts = ["--generator", "dp-ctgan", "--rounds", "2", "--local-steps", "4", "--epsilon", "1.0"]
    report = simulate_small(out, *opts, "--no-evaluate")
    # Assert: each site charged exactly its 8 discriminator steps.
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
