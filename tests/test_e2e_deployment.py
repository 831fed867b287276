"""A real deployment on 127.0.0.1: one coordinator, three hospitals, four refused nodes.

The coordinator runs a SuperLink with TLS and SuperNode authentication; three
sites with registered keys (two through ``fedsynth server sites add``, one
through ``--site-key``) train for three rounds. Three nodes are refused and never
train: site-3, whose key was never registered; site-4, registered but trusting
another CA; site-5, registered but connecting without TLS (no CA at all). A
fourth, site-6, connects with its registered key but runs as ``--site-name
impostor``: it refuses every message and spends nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from shared.cohort import cohort_schema, generate_cohort
from shared.runtime import free_port
from shared.tables import load_table
from tests.e2e import independent_epsilon, ledger, run_cli, start_cli, stop, wait_for

pytestmark = pytest.mark.slow
SITES = 7  # site-3 is never registered; site-4 has the wrong CA; site-5 has no CA
CA = {4: "other-ca", 5: None}
IMPOSTOR = 6  # registered as site-6, runs as --site-name impostor
# The impostor starts after the three real sites connect and may miss round 1; it is
# sampled in the later rounds.
ROUNDS = 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    assert (
        run_cli(["certs", "demo", "--out", str(root / "certs"), "--sites", str(SITES)]).returncode
        == 0
    )
    schema = cohort_schema()
    schema.save(root / "schema.json")
    table = generate_cohort(400 * SITES, seed=11)[schema.names]
    for i in range(SITES):
        table.iloc[i * 400 : (i + 1) * 400].to_csv(root / f"site-{i}.csv", index=False)
    assert (
        run_cli(["certs", "demo", "--out", str(root / "other-ca"), "--sites", "1"]).returncode == 0
    )
    port = free_port()
    for i in (0, 1, 4, 5, IMPOSTOR):
        pub = str(root / "certs" / "sites" / f"site-{i}.pub")
        added = run_cli(
            [
                "server",
                "sites",
                "add",
                f"site-{i}",
                "--key",
                pub,
                "--state-dir",
                str(root / "coordinator"),
            ]
        )
        assert added.returncode == 0, added.stderr
    keys = [
        "--state-dir",
        str(root / "coordinator"),
        "--site-key",
        str(root / "certs" / "sites" / "site-2.pub"),
    ]
    server = start_cli(
        [
            "server",
            "--certs",
            str(root / "certs"),
            *keys,
            "--schema",
            str(root / "schema.json"),
            "--out",
            str(root / "out"),
            "--min-sites",
            "3",
            "--rounds",
            str(ROUNDS),
            "--local-steps",
            "5",
            "--synthetic-rows",
            "500",
            "--round-timeout",
            "180",
            # This test is about TLS and authentication. Secure aggregation (the server's
            # default) starts a ClientApp process per protocol stage, 4 per round, which
            # would double this test's time; it is covered by tests/test_e2e_secagg.py.
            "--no-secure-aggregation",
            "--port",
            str(port),
        ],
        root / "server.log",
    )
    # Sites start once their keys are registered (a real coordinator is up first).
    wait_for(
        lambda: "waiting for 3 site(s)" in (root / "server.log").read_text(errors="replace"),
        120,
        "the coordinator to register the sites",
    )

    def trust(i: int) -> list[str]:
        if i not in CA:
            return ["--ca", str(root / "certs" / "ca.crt")]
        other = CA[i]
        return ["--insecure"] if other is None else ["--ca", str(root / other / "ca.crt")]

    def client(i: int) -> subprocess.Popen[bytes]:
        return start_cli(
            [
                "client",
                "--data",
                str(root / f"site-{i}.csv"),
                "--schema",
                str(root / "schema.json"),
                "--budget-epsilon",
                "5",
                "--superlink",
                f"127.0.0.1:{port}",
                *trust(i),
                "--key",
                str(root / "certs" / "sites" / f"site-{i}.key"),
                "--state-dir",
                str(root / f"state-{i}"),
                "--site-name",
                "impostor" if i == IMPOSTOR else f"site-{i}",
                # auto: the CUDA path on a machine with a GPU, the CPU elsewhere.
                "--device",
                "auto",
                *(["--max-retries", "2"] if i == 3 else []),
            ],
            root / f"client-{i}.log",
        )

    clients = [client(i) for i in range(IMPOSTOR)]
    try:
        # The impostor joins once the three real sites are connected, so that it is
        # never one of the first three a round waits for.
        for i in range(3):
            log = root / f"client-{i}.log"
            wait_for(lambda log=log: "SuperNode ID" in log.read_text(errors="replace"), 180,
                     f"site-{i} to connect")  # fmt: skip
        clients.append(client(IMPOSTOR))
        server_rc = server.wait(timeout=420)
        stranger_rc = clients[3].wait(timeout=120)
        # Nodes without the right CA keep retrying the handshake; the run is over.
        untrusted = [clients[i].poll() for i in CA]
    finally:
        for proc in [server, *clients]:
            stop(proc)
    (root / "rc.json").write_text(
        json.dumps({"server": server_rc, "stranger": stranger_rc, "untrusted": untrusted})
    )
    return {"root": root, "out": root / "out"}


def test_server_completes_and_releases_a_valid_table(deployment: dict[str, Path]) -> None:
    rc = json.loads((deployment["root"] / "rc.json").read_text())
    log = (deployment["root"] / "server.log").read_text(errors="replace")

    assert rc["server"] == 0, log[-3000:]
    # Every reply's name was checked against the node ids the registry was given.
    assert "site names are checked against the registry" in log
    table = load_table(deployment["out"] / "synthetic.csv", cohort_schema())
    assert len(table) == 500
    assert (deployment["out"] / "model" / "manifest.json").exists()


def test_each_server_log_line_appears_once(deployment: dict[str, Path]) -> None:
    log = (deployment["root"] / "server.log").read_text(errors="replace")

    # fedsynth's lines from the ServerApp, streamed through `flwr log`.
    assert log.count(f"round {ROUNDS}/{ROUNDS} done in") == 1, log[-3000:]
    # Flower's lines from the ServerApp: once per round, not again through the root
    # handler that importing Opacus installs (nor its DEBUG records).
    assert log.count("configure_train: Sampled") == ROUNDS, log[-3000:]
    assert ":DEBUG:" not in log


def test_three_ledgers_record_every_round(deployment: dict[str, Path]) -> None:
    report = json.loads((deployment["out"] / "privacy_report.json").read_text())

    assert report["rounds"] == ROUNDS
    assert [s["site"] for s in report["sites"]] == ["site-0", "site-1", "site-2"]
    for site in report["sites"]:
        doc = ledger(deployment["root"] / f"state-{site['site'][-1]}")
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in doc["entries"]]
        assert [e["round"] for e in doc["entries"]] == list(range(1, ROUNDS + 1))
        assert site["steps"] == 5 * ROUNDS
        assert site["epsilon"] == pytest.approx(
            independent_epsilon(history, site["delta"]), rel=1e-9
        )


def test_sites_train_on_the_device_auto_selects(deployment: dict[str, Path]) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for i in range(3):
        log = (deployment["root"] / f"client-{i}.log").read_text(errors="replace")
        rounds = re.findall(rf"site-{i} round (\d): 5 DP steps on (\S+) in", log)
        assert sorted(set(rounds)) == [(str(r), expected) for r in range(1, ROUNDS + 1)], log[
            -2000:
        ]


def test_unregistered_site_is_refused_and_never_trains(deployment: dict[str, Path]) -> None:
    rc = json.loads((deployment["root"] / "rc.json").read_text())
    log = (deployment["root"] / "client-3.log").read_text(errors="replace")

    assert rc["stranger"] != 0
    assert "Failed to activate SuperNode" in log or "2004" in log, log[-2000:]
    assert not (deployment["root"] / "state-3" / "privacy_ledger.json").exists()


# What each refused node's own log shows: the handshake failed, so nothing was sent.
REFUSAL = {4: "CERTIFICATE_VERIFY_FAILED", 5: "Connection attempt failed"}


@pytest.mark.parametrize("i", sorted(CA))
def test_node_without_the_ca_certificate_is_refused_and_never_trains(
    deployment: dict[str, Path], i: int
) -> None:
    log = (deployment["root"] / f"client-{i}.log").read_text(errors="replace")
    report = json.loads((deployment["out"] / "privacy_report.json").read_text())

    assert f"site-{i}" not in [s["site"] for s in report["sites"]]
    assert not (deployment["root"] / f"state-{i}" / "privacy_ledger.json").exists()
    # Its key was registered: the refusal is the TLS handshake.
    assert REFUSAL[i] in log, log[-2000:]
    assert "Receiving: train message" not in log
    # Still retrying when the run ended, it was stopped with SIGTERM: one clear line,
    # not Flower's "Signal 15 ignored due to race condition".
    assert "stopping: received SIGTERM" in log, log[-2000:]
    assert "ignored due to race condition" not in log, log[-2000:]


def test_a_site_under_another_name_refuses_every_message_and_spends_nothing(
    deployment: dict[str, Path],
) -> None:
    root = deployment["root"]
    server_log = (root / "server.log").read_text(errors="replace")
    report = json.loads((deployment["out"] / "privacy_report.json").read_text())

    # Its key got it in; the name it runs under did not: every message it got was refused.
    refusal = "the coordinator registered this site's key as 'site-6', but the site runs with"
    assert refusal in server_log, server_log[-3000:]
    assert "Restart it with --site-name site-6" in server_log
    assert not (root / f"state-{IMPOSTOR}" / "privacy_ledger.json").exists()
    assert {s["site"] for s in report["sites"]} == {"site-0", "site-1", "site-2"}
