"""Faults with real processes on 127.0.0.1: a site dies mid-round, the coordinator dies mid-run.

Processes are killed with SIGKILL, together with every helper Flower started
(SuperNode, SuperExec, ClientApp/ServerApp processes), as a power cut would.
These runs use ``--insecure`` to save time: TLS and node authentication are
covered by ``test_e2e_deployment.py`` and do not change how faults are handled.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shared.cohort import cohort_schema, generate_cohort
from shared.runtime import free_port
from tests.e2e import kill_tree, ledger, start_cli, stop, wait_for

pytestmark = pytest.mark.slow
ROUND_TIMEOUT = 90


def federation(root: Path, rows: list[int]) -> None:
    """Schema and one CSV per site (``rows[i]`` rows at site i)."""
    root.mkdir(parents=True, exist_ok=True)
    schema = cohort_schema()
    schema.save(root / "schema.json")
    table = generate_cohort(sum(rows), seed=21)[schema.names]
    start = 0
    for i, n in enumerate(rows):
        table.iloc[start : start + n].to_csv(root / f"site-{i}.csv", index=False)
        start += n


def start_server(root: Path, port: int, *args: str, log: str = "server.log") -> Any:
    return start_cli(
        [
            *("server", "--insecure", "--schema", str(root / "schema.json")),
            *("--out", str(root / "out"), "--port", str(port), "--synthetic-rows", "100"),
            *("--round-timeout", str(ROUND_TIMEOUT), *args),
        ],
        root / log,
    )


def start_site(root: Path, port: int, i: int) -> subprocess.Popen[bytes]:
    return start_cli(
        [
            *("client", "--insecure", "--superlink", f"127.0.0.1:{port}", "--device", "cpu"),
            *("--data", str(root / f"site-{i}.csv"), "--schema", str(root / "schema.json")),
            *("--budget-epsilon", "20", "--state-dir", str(root / f"state-{i}")),
            *("--site-name", f"site-{i}"),
        ],
        root / f"client-{i}.log",
    )


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def rounds_in_ledger(root: Path, i: int) -> list[int]:
    path = root / f"state-{i}" / "privacy_ledger.json"
    return [e["round"] for e in ledger(root / f"state-{i}")["entries"]] if path.exists() else []


def checkpoint_round(root: Path) -> int:
    path = root / "out" / "checkpoints" / "latest.json"
    try:
        return int(json.loads(path.read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


# ----------------------------------------------------------- a site dies mid-round
@pytest.fixture(scope="module")
def site_killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two federations at once: 3 sites with quorum 2, and 2 sites with quorum 2.

    In each, site-0 is SIGKILLed once it has received the round-1 message.
    """
    out: dict[str, Any] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, sites in (("quorum", 3), ("short", 2)):
            root = tmp_path_factory.mktemp(name)
            federation(root, [300] * sites)
            port = free_port()
            server = start_server(
                root, port, "--min-sites", "2", "--rounds", "1", "--local-steps", "3"
            )
            clients = [start_site(root, port, i) for i in range(sites)]
            procs += [server, *clients]
            out[name] = {"root": root, "server": server, "victim": clients[0]}
        for case in out.values():
            log = case["root"] / "client-0.log"
            wait_for(lambda log=log: "train" in text(log).lower(), 240, "site-0 to get round 1")
            kill_tree(case["victim"].pid)
            case["killed_at"] = time.monotonic()
        for case in out.values():
            case["rc"] = case["server"].wait(timeout=ROUND_TIMEOUT + 180)
            case["seconds_after_kill"] = time.monotonic() - case["killed_at"]
    finally:
        for proc in procs:
            stop(proc)
    return out


def test_round_completes_with_the_surviving_quorum(site_killed: dict[str, Any]) -> None:
    case = site_killed["quorum"]
    root = case["root"]

    assert case["rc"] == 0, text(root / "server.log")[-3000:]
    report = json.loads((root / "out" / "privacy_report.json").read_text())
    assert report["rounds"] == 1
    assert [s["site"] for s in report["sites"]] == ["site-1", "site-2"]
    assert rounds_in_ledger(root, 1) == rounds_in_ledger(root, 2) == [1]
    # The dead site may have charged its ledger before it died (never more than once).
    assert rounds_in_ledger(root, 0) in ([], [1])


def test_round_below_quorum_fails_within_its_timeout_with_the_named_error(
    site_killed: dict[str, Any],
) -> None:
    case = site_killed["short"]
    root = case["root"]
    log = text(root / "server.log")

    assert case["rc"] == 2, log[-3000:]
    assert "RoundFailedError" in log or "fewer than the minimum of 2" in log, log[-3000:]
    assert case["seconds_after_kill"] < ROUND_TIMEOUT + 60
    assert not (root / "out" / "synthetic.csv").exists()
    assert checkpoint_round(root) == 0, "a round below quorum was checkpointed"


# ----------------------------------------------------- the coordinator dies mid-run
ROUNDS = 4


def test_server_killed_mid_run_resumes_and_ledgers_match_aggregated_rounds(
    tmp_path: Path,
) -> None:
    # site-1 is much larger, so site-0 finishes a round well before the round is
    # aggregated: the kill lands after site-0 trained and charged, before aggregation.
    federation(tmp_path, [300, 30_000])
    port = free_port()
    # Without secure aggregation a site re-sends an answered round for free; under it the
    # round is trained and charged again (tests/test_client_app.py covers that).
    args = ["--min-sites", "2", "--rounds", str(ROUNDS), "--local-steps", "20"]
    args.append("--no-secure-aggregation")
    server = start_server(tmp_path, port, *args)
    clients = [start_site(tmp_path, port, i) for i in range(2)]
    restarted = None
    try:
        killed_in = 0
        deadline = time.monotonic() + 400
        while not killed_in and time.monotonic() < deadline and server.poll() is None:
            done = checkpoint_round(tmp_path)
            if 1 <= done < ROUNDS - 1 and done + 1 in rounds_in_ledger(tmp_path, 0):
                kill_tree(server.pid)
                killed_in = done + 1
            time.sleep(0.1)
        assert killed_in, "never caught a round trained by site-0 but not yet aggregated"
        assert checkpoint_round(tmp_path) == killed_in - 1
        server.wait(timeout=30)

        restarted = start_server(tmp_path, port, *args, log="server-restarted.log")
        rc = restarted.wait(timeout=400)
    finally:
        for proc in [server, *clients, *([restarted] if restarted else [])]:
            stop(proc)

    log = text(tmp_path / "server-restarted.log")
    assert rc == 0, log[-3000:]
    assert f"resuming from the checkpoint of round {killed_in - 1}" in log
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert report["rounds"] == ROUNDS
    for i in range(2):
        # Every aggregated round charged exactly once, including the interrupted one.
        assert rounds_in_ledger(tmp_path, i) == list(range(1, ROUNDS + 1)), text(
            tmp_path / f"client-{i}.log"
        )[-2000:]
        site = next(s for s in report["sites"] if s["site"] == f"site-{i}")
        assert site["steps"] == 20 * ROUNDS
    assert "asked again for a round this site already answered" in text(tmp_path / "client-0.log")
