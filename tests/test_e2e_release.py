"""``fedsynth simulate`` with a release family (``dp-marginal``, ``dp-copula``) through real Flower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.manifest import load_model
from shared.models.copula import CopulaGenerator
from shared.models.marginal import MarginalGenerator
from tests.e2e import independent_epsilon, ledger, simulate_small

pytestmark = pytest.mark.slow


def test_simulate_fits_dp_marginal_from_two_charged_releases_and_resumes_free(
    tmp_path: Path,
) -> None:
    # Execute: 2 sites, ε = 1; no DP-SGD rounds, one release per stage.
    out = tmp_path / "out"
    opts = ("--generator", "dp-marginal", "--epsilon", "1", "--no-evaluate")
    report = simulate_small(out, *opts)
    # Assert: a fitted network (not the unfitted uniform one) was released.
    family, _ = load_model(out / "model")
    assert isinstance(family, MarginalGenerator)
    assert (family.net.parents >= 0).any()
    stages = report["release_stages"]["stages"]
    assert [s["stage"] for s in stages] == [0, 1, 2]
    assert all(s["sites_sent"] == ["site-0", "site-1"] for s in stages)
    # Each ledger holds exactly the two announced releases, and together they spend ε = 1.
    for name in ("site-0", "site-1"):
        entries = ledger(out / "sites" / name / "state")["entries"]
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        assert history == [(s["noise_multiplier"], 1.0, 1) for s in stages]
        assert [e["max_grad_norm"] for e in entries] == [s["l2_sensitivity"] for s in stages]
        assert 0.98 <= independent_epsilon(history, delta=1e-5) <= 1.0
    assert all(0.98 <= s["epsilon"] <= 1.0 for s in report["sites"])
    assert "noisy release stage(s)" in (out / "privacy_report.md").read_text()
    # Rerun with the same --out: refitted from the saved sums, nothing charged again.
    again = simulate_small(out, *opts)
    for name in ("site-0", "site-1"):
        assert len(ledger(out / "sites" / name / "state")["entries"]) == 3
    assert again["sites"] == report["sites"]
    saved = json.loads((out / "release_stages.json").read_text())
    assert len(saved["stages"]) == 3


def test_simulate_fits_dp_copula_through_secure_aggregation_with_distributed_noise(
    tmp_path: Path,
) -> None:
    # Execute: 2 sites, ε = 1; each stage's statistics (pair sums of either sign
    # included) go through Flower's secure aggregation, each site adding half the noise.
    out = tmp_path / "out"
    opts = ("--generator", "dp-copula", "--epsilon", "1", "--no-evaluate")
    opts += ("--secure-aggregation", "--noise-placement", "distributed")
    report = simulate_small(out, *opts)
    # Assert: a fitted copula (some latent correlation, not the unfitted identity).
    family, _ = load_model(out / "model")
    assert isinstance(family, CopulaGenerator)
    corr = family.cop.corr.numpy()
    assert np.abs(corr - np.eye(len(corr))).max() > 0.1
    release = report["release_stages"]
    assert release["noise_placement"] == "distributed"
    assert release["per_site_statistics_seen_by_server"] is False
    stages = release["stages"]
    assert [s["stage"] for s in stages] == [0, 1, 2]
    assert all(s["noise_sites"] == 2 and s["secure_aggregation"]["survivors"] == 2 for s in stages)
    for name in ("site-0", "site-1"):
        entries = ledger(out / "sites" / name / "state")["entries"]
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        assert history == [(s["noise_multiplier"], 1.0, 1) for s in stages]
        assert 0.98 <= independent_epsilon(history, delta=1e-5) <= 1.0
