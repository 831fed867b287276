"""``fedsynth simulate --secure-aggregation`` end to end on Flower's simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import run_cli

pytestmark = pytest.mark.slow


def test_secure_simulation_releases_a_model_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli(
        [
            "simulate",
            "--secure-aggregation",
            "--sites",
            "3",
            "--rounds",
            "2",
            "--local-steps",
            "3",
            "--synthetic-rows",
            "300",
            "--no-evaluate",
            "--out",
            str(out),
        ]
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    report = json.loads((out / "privacy_report.json").read_text())
    table = load_table(out / "synthetic.csv", Schema.load(out / "schema.json"))
    assert len(table) == 300 and (out / "model" / "weights.pt").exists()
    assert report["run"]["secure_aggregation"] is True and report["rounds"] == 2
    for entry in report["round_history"]:
        assert entry["trained"] == ["site-0", "site-1", "site-2"]
        assert entry["secure_aggregation"]["survivors"] == 3
        assert entry["secure_aggregation"]["threshold"] == 2
    assert "## Secure aggregation\n\nOn:" in (out / "privacy_report.md").read_text()
