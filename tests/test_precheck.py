"""The budget check a site makes at a secure round's key set-up, before anyone trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.errors import BudgetExhaustedError, LedgerError
from client.ledger import PrivacyLedger
from client.precheck import REPLAY_RECORD, check_round_budget, config_digest
from client.settings import SiteSettings
from shared.config import TrainSettings


def _site(tmp_path: Path, budget: float) -> SiteSettings:
    return SiteSettings(
        site_name="site-a",
        data_path=tmp_path / "data.csv",
        schema_path=tmp_path / "schema.json",
        state_dir=tmp_path / "state",
        budget_epsilon=budget,
    )


def _train(server_round: int = 3) -> TrainSettings:
    return TrainSettings(
        server_round=server_round,
        local_steps=50,
        noise_multiplier=1.0,
        sample_rate=0.1,
        max_grad_norm=1.0,
        learning_rate=0.01,
        update_clip_norm=10.0,
        seed=0,
        schema_fingerprint="f" * 64,
    )


def _spend(site: SiteSettings) -> float:
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name)
    ledger.record(
        run="r", server_round=1, noise_multiplier=1.0, sample_rate=0.1, steps=50,
        max_grad_norm=1.0,
    )  # fmt: skip
    return ledger.projected_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=50, delta=1e-5)


def test_an_affordable_round_passes_and_an_unaffordable_one_is_refused(tmp_path: Path) -> None:
    probe = _site(tmp_path, 100.0)
    after_next = _spend(probe)

    check_round_budget(_site(tmp_path, after_next + 1e-6), _train())

    with pytest.raises(BudgetExhaustedError, match=r"declines: 50 more steps .*Nothing was"):
        check_round_budget(_site(tmp_path, after_next - 1e-3), _train())
    assert len(PrivacyLedger.open(probe.ledger_path, site="site-a").entries) == 1  # no charge


def test_a_round_already_answered_passes_whatever_the_budget(tmp_path: Path) -> None:
    # Prepare: the site sent round 3's update, then the coordinator restarted.
    site = _site(tmp_path, 1e-3)
    _spend(site)
    record = {"request": "x", "config": config_digest(_train(3)), "sha256": "y"}
    (site.state_dir / REPLAY_RECORD).write_text(json.dumps(record), encoding="utf-8")

    # Execute / Assert: the same round is re-sent for free; another round is not.
    check_round_budget(site, _train(3))
    with pytest.raises(BudgetExhaustedError):
        check_round_budget(site, _train(4))


def test_a_damaged_ledger_fails_closed(tmp_path: Path) -> None:
    site = _site(tmp_path, 100.0)
    _spend(site)
    site.ledger_path.write_text("{not json", encoding="utf-8")

    with pytest.raises(LedgerError):
        check_round_budget(site, _train())
