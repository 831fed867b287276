"""``dp-marginal`` over the deployment engine: a TLS SuperLink and two authenticated sites.

The release stages travel the same gRPC/TLS path as training rounds, under the
coordinator's default secure aggregation with the noise split over the two sites
(``--noise-placement distributed``): each site answers every stage's four secure
aggregation messages and records exactly three ledger entries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cohort import cohort_schema, generate_cohort
from shared.runtime import free_port
from shared.schema import Schema
from shared.tables import load_table
from tests.e2e import independent_epsilon, ledger, run_cli, start_cli, stop, wait_for

pytestmark = pytest.mark.slow


def test_dp_marginal_deploys_over_tls_with_distributed_noise_and_charges_each_site_twice(
    tmp_path: Path,
) -> None:
    root = tmp_path
    assert run_cli(["certs", "demo", "--out", str(root / "certs"), "--sites", "2"]).returncode == 0
    schema = cohort_schema()
    schema.save(root / "schema.json")
    table = generate_cohort(800, seed=12)[schema.names]
    for i in range(2):
        table.iloc[i * 400 : (i + 1) * 400].to_csv(root / f"site-{i}.csv", index=False)
    port = free_port()
    server = start_cli(
        [
            "server",
            "--certs",
            str(root / "certs"),
            *[a for i in range(2) for a in ("--site-key", str(root / f"certs/sites/site-{i}.pub"))],
            "--state-dir",
            str(root / "coordinator"),
            "--schema",
            str(root / "schema.json"),
            "--out",
            str(root / "out"),
            "--min-sites",
            "2",
            "--generator",
            "dp-marginal",
            "--epsilon",
            "1",
            "--noise-placement",
            "distributed",
            "--synthetic-rows",
            "500",
            "--round-timeout",
            "180",
            "--port",
            str(port),
        ],
        root / "server.log",
    )
    wait_for(
        lambda: "waiting for 2 site(s)" in (root / "server.log").read_text(errors="replace"),
        120,
        "the coordinator to register the sites",
    )
    clients = [
        start_cli(
            [
                "client",
                "--data",
                str(root / f"site-{i}.csv"),
                "--schema",
                str(root / "schema.json"),
                "--budget-epsilon",
                "2",
                "--superlink",
                f"127.0.0.1:{port}",
                "--ca",
                str(root / "certs" / "ca.crt"),
                "--key",
                str(root / "certs" / "sites" / f"site-{i}.key"),
                "--state-dir",
                str(root / f"state-{i}"),
                "--site-name",
                f"site-{i}",
            ],
            root / f"client-{i}.log",
        )
        for i in range(2)
    ]
    try:
        server_rc = server.wait(timeout=300)
    finally:
        for proc in [server, *clients]:
            stop(proc)
    assert server_rc == 0, (root / "server.log").read_text(errors="replace")[-3000:]
    out = root / "out"
    assert len(load_table(out / "synthetic.csv", Schema.load(root / "schema.json"))) == 500
    for i in range(2):
        entries = ledger(root / f"state-{i}")["entries"]
        assert [e["round"] for e in entries] == [1, 2, 3]
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        assert 0.98 <= independent_epsilon(history, delta=1e-5) <= 1.0
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["run"]["secure_aggregation"] is True
    assert report["run"]["noise_placement"] == "distributed"
    stages = report["release_stages"]["stages"]
    assert [s["noise_sites"] for s in stages] == [2, 2, 2]
    assert all(s["secure_aggregation"]["survivors"] == 2 for s in stages)
    md = (out / "privacy_report.md").read_text()
    assert "noisy release stage(s)" in md and "learnt only the sum" in md
