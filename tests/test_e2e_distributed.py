"""``fedsynth simulate --noise-placement distributed`` end to end on Flower's simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.app import initial_model
from shared.config import RunSettings
from shared.distdp.step import parameter_count
from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import independent_epsilon, ledger, run_cli

SITES, STEPS = 3, 2


@pytest.mark.slow
def test_distributed_simulation_spends_the_plans_epsilon_at_every_site(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["simulate", "--noise-placement", "distributed", "--secure-aggregation"]
    args += ["--sites", str(SITES), "--rounds", "1", "--local-steps", str(STEPS)]
    args += ["--epsilon", "1", "--synthetic-rows", "200", "--no-evaluate", "--out", str(out)]
    res = run_cli(args, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    schema = Schema.load(out / "schema.json")
    assert len(load_table(out / "synthetic.csv", schema)) == 200
    assert (out / "model" / "weights.pt").exists()
    report = json.loads((out / "privacy_report.json").read_text())
    rows = sum(len(load_table(p, schema)) for p in sorted((out / "sites").glob("site-*/data.csv")))
    settings = RunSettings.from_run_config(
        {
            "schema-path": str(out / "schema.json"),
            "out-dir": str(out),
            "noise-placement": "distributed",
            "secure-aggregation": True,
            "min-sites": SITES,
            "announced-rows": rows,
            "rounds": 1,
            "local-steps": STEPS,
            "epsilon": 1.0,
        }
    )
    plan = settings.distributed_plan()
    dim = parameter_count(initial_model(schema, settings).private_module())
    facts = report["distributed"]
    assert report["run"]["noise_placement"] == "distributed"
    assert facts["expected_batch"] == pytest.approx(0.1 * rows)
    assert facts["epsilon_against_server"] == pytest.approx(plan.epsilon_at(dim=dim, colluders=0))
    assert facts["epsilon_at_largest_collusion"] == pytest.approx(
        plan.epsilon_at(dim=dim, colluders=1)
    )
    assert facts["epsilon_against_server"] <= 1.0 < facts["epsilon_at_largest_collusion"]
    md = (out / "privacy_report.md").read_text()
    assert "only if secure aggregation holds" in md and "aborted before unmasking" in md

    history = report["round_history"][0]
    assert history["trained"] == ["site-0", "site-1", "site-2"]
    assert history["distributed"]["steps"] == STEPS
    for i in range(SITES):
        doc = ledger(out / "sites" / f"site-{i}" / "state")
        mechs = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in doc["entries"]]
        assert mechs == [(facts["accounted_noise_multiplier"], 0.1, 1)] * STEPS
        # The ledger's ε, recomputed by Opacus directly, is the plan's ε at t = 0.
        eps = independent_epsilon(mechs, 1e-5)
        assert eps == pytest.approx(facts["epsilon_against_server"], rel=1e-6)
        site = next(s for s in report["sites"] if s["site"] == f"site-{i}")
        assert site["epsilon"] == pytest.approx(eps, rel=1e-6)


@pytest.mark.slow
def test_distributed_without_secure_aggregation_fails_with_the_reason(tmp_path: Path) -> None:
    res = run_cli(
        ["simulate", "--noise-placement", "distributed", "--out", str(tmp_path / "out")],
        timeout=120,
    )
    assert res.returncode == 2
    assert "'distributed' needs secure aggregation" in res.stderr
    assert "--secure-aggregation" in res.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
