"""A site that declines a round is listed, with its public reason, in the privacy report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger
from client.settings import LEDGER_FILE
from server.app import run_federation
from server.report import build_report
from server.report_md import render_markdown
from shared.config import RunSettings
from tests.test_secagg_flower import InProcessGrid, _task_identity, make_run  # noqa: F401
from tests.test_secagg_flower import sites_template as _template


@pytest.fixture(scope="module")
def sites_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined,no-any-return]


def test_a_round_declined_by_a_bad_table_is_in_the_report_with_its_reason(
    sites_template: Path, tmp_path: Path
) -> None:
    # Prepare: two rounds, any two sites suffice; site-2's table breaks after round 1.
    settings, cfg = make_run(sites_template, tmp_path / "run", **{"rounds": 2, "min-sites": 2})
    table = Path(cfg["sites-dir"]) / "site-2" / "data.csv"
    good = table.read_text()
    broken = good.replace(",female,", ",unknown-sex,", 1)
    assert broken != good

    class BreaksAfterRoundOne(InProcessGrid):
        rounds_seen = 0

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                self.rounds_seen += 1
                if self.rounds_seen == 2:
                    table.write_text(broken)
            return super().send_and_receive(messages, timeout=timeout)

    grid = BreaksAfterRoundOne(cfg)

    # Execute
    run_federation(grid, settings)

    # Assert: round 2 went on with two sites; the report names site-2's fixed reason.
    report = json.loads((Path(cfg["out-dir"]) / "privacy_report.json").read_text())
    history = {h["round"]: h for h in report["round_history"]}
    assert history[1]["decline_reasons"] == {}
    assert history[2]["trained"] == ["site-0", "site-1"]
    assert history[2]["decline_reasons"] == {
        "site-2": "the site's table failed schema validation; details are in the site's log"
    }
    md = (Path(cfg["out-dir"]) / "privacy_report.md").read_text()
    assert "## Declined rounds" in md
    assert "- round 2: site-2: the site's table failed schema validation" in md
    # Charged for round 1 only: the declined round cost nothing.
    ledger = PrivacyLedger.open(table.parent / "state" / LEDGER_FILE, site="site-2")
    assert [e.round for e in ledger.entries] == [1]


def test_a_refusal_at_the_secure_key_set_up_is_in_the_report(
    sites_template: Path, tmp_path: Path
) -> None:
    # Prepare: site-0 spent its budget earlier; two sites meet --min-sites and the
    # threshold, so the round goes on without it.
    settings, cfg = make_run(
        sites_template, tmp_path / "run", **{"secure-aggregation": True, "min-sites": 2}
    )
    state_dir = Path(cfg["sites-dir"]) / "site-0" / "state"
    PrivacyLedger.open(state_dir / LEDGER_FILE, site="site-0").record(
        run="earlier", server_round=1, noise_multiplier=0.6, sample_rate=0.5, steps=400,
        max_grad_norm=1.0,
    )  # fmt: skip

    # Execute
    run_federation(InProcessGrid(cfg), settings)

    # Assert: the refusal never reached the strategy's replies, yet the report has it
    # (a simulation has no registry, so the refusing site is named by its node).
    report = json.loads((Path(cfg["out-dir"]) / "privacy_report.json").read_text())
    (round_one,) = report["round_history"]
    assert round_one["trained"] == ["site-1", "site-2"]
    assert round_one["declined"] == ["node 101"]
    assert "would raise its cumulative ε" in round_one["decline_reasons"]["node 101"]


def test_a_report_without_declines_has_no_declines_section_and_names_the_divisor() -> None:
    settings = RunSettings(sample_rate=0.1, announced_rows=3000, min_sites=3)
    history = [{"round": 1, "seconds": 1.0, "trained": ["a"], "declined": []}]
    report = build_report(settings, {}, 1, "dp-vae", 1.0, history)
    md = render_markdown(report)

    assert "Declined rounds" not in md
    assert report["run"]["expected_batch"] == 100.0
    assert "by the public expected batch 100 (never by its own row count)" in md
