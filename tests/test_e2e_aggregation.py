"""``fedsynth simulate --aggregation ...`` end to end on Flower's simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e import ledger, run_cli

pytestmark = pytest.mark.slow

ARGS = ["simulate", "--sites", "2", "--rounds", "2", "--local-steps", "3"]
ARGS += ["--synthetic-rows", "200", "--no-evaluate"]


def test_fedadam_under_secure_aggregation_checkpoints_its_state_and_resumes(
    tmp_path: Path,
) -> None:
    # Prepare / Execute: a finished run, then the same command again (resumes at the end).
    out = tmp_path / "out"
    cmd = [*ARGS, "--aggregation", "fedadam", "--secure-aggregation", "--out", str(out)]
    first = run_cli(cmd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    again = run_cli(cmd)

    # Assert
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert latest["optimiser"] == "optimiser-0002.pt"
    assert latest["identity"]["aggregation"]["aggregation"] == "fedadam"
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["run"]["secure_aggregation"] is True
    assert [e["trained"] for e in report["round_history"]] == [["site-0", "site-1"]] * 2


def test_fedprox_reaches_the_sites_and_charges_the_planned_steps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli([*ARGS, "--aggregation", "fedprox", "--proximal-mu", "0.5", "--out", str(out)])

    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["run"]["server_optimiser"]["proximal_mu"] == 0.5
    assert "FedProx" in report["run"]["aggregation"]
    for site in ("site-0", "site-1"):
        doc = ledger(out / "sites" / site / "state")
        assert sum(e["steps"] for e in doc["entries"]) == 6
