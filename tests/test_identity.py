"""Site names in replies are checked against the coordinator's registry (server.identity)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import run_federation
from server.errors import DeploymentError, ProtocolError
from server.identity import bind_names, node_label, registered_name, write_site_nodes
from shared import keys
from tests.test_secagg_flower import InProcessGrid, make_run
from tests.test_secagg_flower import sites_template as _template


@pytest.fixture(autouse=True)
def _unbound() -> Iterator[None]:
    yield
    bind_names(None)  # process state: never leak a map into another test


@pytest.fixture(scope="module")
def sites_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined,no-any-return]


def test_without_a_map_the_declared_name_is_used() -> None:
    bind_names(None)
    assert registered_name(5, "anything") == "anything"
    bind_names("")
    assert registered_name(5, "anything") == "anything"


def test_a_reply_must_come_from_the_node_of_the_name_it_declares(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "site-nodes.json"
    write_site_nodes(path, {"hospital-a": 7, "hospital-b": 8})
    bind_names(path)

    # Execute / Assert
    assert json.loads(path.read_text()) == {"7": "hospital-a", "8": "hospital-b"}
    assert registered_name(7, "hospital-a") == "hospital-a"
    with pytest.raises(ProtocolError, match=r"registered for site 'hospital-a' but its reply "):
        registered_name(7, "hospital-b")
    with pytest.raises(ProtocolError, match=r"--site-name hospital-b \(the name its key"):
        registered_name(8, "hospital-a")
    with pytest.raises(ProtocolError, match=r"node 9 is not a registered site"):
        registered_name(9, "hospital-c")
    path.write_text("{damaged", encoding="utf-8")
    with pytest.raises(DeploymentError, match=r"cannot read the site registry's node map"):
        registered_name(7, "hospital-a")


def test_log_lines_name_a_node_by_its_registered_site(tmp_path: Path) -> None:
    assert node_label(7) == "node 7"  # a simulation: no map
    path = tmp_path / "site-nodes.json"
    write_site_nodes(path, {"hospital-a": 7})
    bind_names(path)
    assert node_label(7) == "site hospital-a (node 7)"
    assert node_label(8) == "node 8 (not in the site registry now)"  # e.g. removed mid-run


@pytest.mark.usefixtures("_task_identity")
@pytest.mark.parametrize("secure", [False, True])
def test_a_site_under_another_name_refuses_everything_and_is_left_out_uncharged(
    sites_template: Path, tmp_path: Path, secure: bool
) -> None:
    # Prepare: nodes 101-103 run as site-0..2; the registry put node 103's key under
    # hospital-x, so that site runs under a name its key does not carry.
    run = tmp_path / "run"
    nodes = run.parent / "site-nodes.json"
    write_site_nodes(nodes, {"site-0": 101, "site-1": 102, "hospital-x": 103})
    extra: dict[str, Any] = {"site-nodes": str(nodes), "min-sites": 2, "secure-aggregation": secure}
    settings, cfg = make_run(sites_template, run, **extra)
    grid = InProcessGrid(cfg)

    # Execute
    out = run_federation(grid, settings)

    # Assert: site-2 refused before computing anything, with the fix; the others ran.
    first = keys.SECAGG_SETUP if secure else "train"  # the first message of the round
    (refusal,) = [r for r in grid.received[first] if r.has_error()]
    assert "registered this site's key as 'hospital-x', but the site runs with --site-name " in (
        refusal.error.reason
    )
    assert "Restart it with --site-name hospital-x" in refusal.error.reason
    assert not (run / "sites" / "site-2" / "state" / "privacy_ledger.json").exists()
    report = json.loads((out / "privacy_report.json").read_text())
    assert [s["site"] for s in report["sites"]] == ["site-0", "site-1"]
    assert report["round_history"][0]["trained"] == ["site-0", "site-1"]
    assert report["site_names"].startswith("checked: each is the name its authenticated key")
    assert "Site names: checked" in (out / "privacy_report.md").read_text()
    # The handlers never saw the name record: the two sites' replies are the usual ones.
    last = keys.SECAGG_TRAIN if secure else "train"
    fields = keys.SECAGG_REPLY_FIELDS if secure else keys.SITE_REPLY_FIELDS
    replies = [r for r in grid.received[last] if not r.has_error()]
    assert len(replies) == 2 and all(set(r.content) <= set(fields) for r in replies)


def test_the_node_map_path_does_not_stop_a_restarted_coordinator_resuming() -> None:
    # Each `fedsynth server` start writes the map into its own runtime folder.
    from server.app import run_identity
    from shared.cohort import cohort_schema
    from shared.config import RunSettings

    first, second = (
        RunSettings.from_run_config(
            {"schema-path": "/s.json", "out-dir": "/o", "site-nodes": f"/tmp/{n}/map"}
        )
        for n in ("a", "b")
    )
    schema = cohort_schema()
    assert run_identity(first, schema) == run_identity(second, schema)
