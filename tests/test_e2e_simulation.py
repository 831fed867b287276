"""``fedsynth simulate`` end to end: real Flower simulation engine, real Opacus, real ledgers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import independent_epsilon, ledger, run_cli

pytestmark = pytest.mark.slow
SIM = ["simulate", "--sites", "2", "--rounds", "2", "--local-steps", "5", "--synthetic-rows", "500"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "out"
    res = run_cli([*SIM, "--epsilon", "2.0", "--site-budget", "4.0", "--out", str(out)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_outputs_exist_and_table_is_valid(first_run: Path) -> None:
    schema = Schema.load(first_run / "schema.json")
    table = load_table(first_run / "synthetic.csv", schema)

    assert len(table) == 500
    assert (first_run / "model" / "manifest.json").exists()
    assert (first_run / "model" / "weights.pt").exists()
    assert (first_run / "privacy_report.md").read_text().startswith("# Privacy report")


def test_report_epsilon_is_cumulative_and_recomputable(first_run: Path) -> None:
    report = json.loads((first_run / "privacy_report.json").read_text())

    assert report["rounds"] == 2 and report["generator"] == "dp-vae"
    assert sorted(s["site"] for s in report["sites"]) == ["site-0", "site-1"]
    for site in report["sites"]:
        assert set(site) >= {
            "site",
            "epsilon",
            "delta",
            "noise_multiplier",
            "sample_rate",
            "steps",
            "max_grad_norm",
            "accountant",
            "secure_mode",
        }
        assert site["steps"] == 10
        expected = independent_epsilon(
            [(site["noise_multiplier"], site["sample_rate"], site["steps"])], site["delta"]
        )
        assert site["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert site["epsilon"] <= 2.0


def test_second_run_continues_the_ledger(first_run: Path) -> None:
    first = json.loads((first_run / "privacy_report.json").read_text())["sites"][0]

    res = run_cli(
        [
            *SIM,
            "--epsilon",
            "1.0",
            "--site-budget",
            "4.0",
            "--restart",
            "--seed",
            "1",
            "--out",
            str(first_run),
        ]
    )

    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    site = json.loads((first_run / "privacy_report.json").read_text())["sites"][0]
    doc = ledger(first_run / "sites" / "site-0" / "state")
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in doc["entries"]]
    assert len(history) == 4 and site["steps"] == 20
    assert site["epsilon"] > first["epsilon"]
    assert site["epsilon"] == pytest.approx(independent_epsilon(history, site["delta"]), rel=1e-9)


def test_run_over_budget_is_refused_before_anything_leaves(first_run: Path) -> None:
    before = ledger(first_run / "sites" / "site-0" / "state")["entries"]

    res = run_cli(
        [*SIM, "--epsilon", "10.0", "--site-budget", "4.0", "--restart", "--out", str(first_run)]
    )

    assert res.returncode == 2
    assert "cannot finish this run" in res.stderr and "total budget" in res.stderr
    assert "could afford 0 of the 2 training round(s)" in res.stderr
    assert "nothing was charged" in res.stderr
    assert ledger(first_run / "sites" / "site-0" / "state")["entries"] == before


def test_a_run_the_sites_cannot_finish_is_refused_before_its_first_charge(
    first_run: Path,
) -> None:
    # Prepare: the two runs above left about ε 2.1 of 4 spent at each site; 6 rounds at
    # ε 4 would end near 4.3, though the first 4 rounds fit (the accountant's figures).
    state = first_run / "sites" / "site-0" / "state"
    before = ledger(state)["entries"]
    args = ["--rounds", "6", "--epsilon", "4.0", "--site-budget", "4.0", "--restart"]

    # Execute
    res = run_cli([*SIM, *args, "--out", str(first_run)])

    # Assert: refused from the plan, with how much each site could still do; no charge.
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert "cannot finish this run" in res.stderr
    assert "could afford 4 of the 6 training round(s) left" in res.stderr
    assert "can afford the whole run" in res.stderr and "nothing was charged" in res.stderr
    assert ledger(state)["entries"] == before
