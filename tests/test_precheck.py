"""The budget check a site makes at a secure key set-up, before any site computes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, RecordDict

from client.errors import (
    BudgetExhaustedError,
    LedgerError,
    SchemaMismatchError,
    SiteConfigError,
    public_reason,
)
from client.ledger import PrivacyLedger
from client.precheck import (
    REPLAY_RECORD,
    check_announced,
    check_one_release,
    check_round_budget,
)
from client.settings import SiteSettings
from shared import keys
from shared.config import TrainSettings
from shared.dp_quantile import HistogramRequest
from shared.run_plan import train_config_digest
from shared.schema import Schema

COHORT = Path(__file__).parents[1] / "shared" / "data" / "cohort_schema.json"
FINGERPRINT = Schema.load(COHORT).fingerprint()


def _site(tmp_path: Path, budget: float) -> SiteSettings:
    if not (tmp_path / "schema.json").exists():
        shutil.copy(COHORT, tmp_path / "schema.json")
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
        schema_fingerprint=FINGERPRINT,
        expected_batch=30.0,
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


def test_under_secure_aggregation_an_answered_round_is_charged_again(tmp_path: Path) -> None:
    # Prepare: the site sent round 3's update, then the coordinator restarted. Re-sent
    # into a second secure sum, the update would show alone in the difference of sums.
    site = _site(tmp_path, 1e-3)
    _spend(site)
    record = {"request": "x", "config": train_config_digest(_train(3)), "sha256": "y"}
    (site.state_dir / REPLAY_RECORD).write_text(json.dumps(record), encoding="utf-8")

    # Execute / Assert: the same round is checked like any other.
    with pytest.raises(BudgetExhaustedError, match="declines: 50 more steps"):
        check_round_budget(site, _train(3))


def test_a_damaged_ledger_fails_closed(tmp_path: Path) -> None:
    site = _site(tmp_path, 100.0)
    _spend(site)
    site.ledger_path.write_text("{not json", encoding="utf-8")

    with pytest.raises(LedgerError):
        check_round_budget(site, _train())


def _setup(stage: str | None, **records: ConfigRecord) -> RecordDict:
    secagg = {keys.SA_INDEX: 1} | ({keys.SA_STAGE: stage} if stage else {})
    return RecordDict({keys.SECAGG: ConfigRecord(secagg), **records})  # type: ignore[arg-type]


def test_the_announced_stage_picks_the_mechanism_checked(tmp_path: Path) -> None:
    site = _site(tmp_path, 100.0)
    after_next = _spend(site)
    poor = _site(tmp_path, after_next - 1e-3)
    train = {keys.TRAIN_CONFIG: ConfigRecord(_train().to_config())}  # type: ignore[arg-type]
    hist = HistogramRequest(noise_multiplier=0.3, bins=32, schema_fingerprint="f" * 64)
    encoder = {keys.ENCODER_CONFIG: ConfigRecord(hist.to_config())}  # type: ignore[arg-type]

    with pytest.raises(BudgetExhaustedError, match="50 more steps"):
        check_announced(poor, _setup(keys.SECAGG_TRAIN, **train))
    # One release at σ_h = 0.3 costs more than the 1e-3 of ε left.
    with pytest.raises(BudgetExhaustedError, match=r"1 more steps at σ=0.3, q=1"):
        check_announced(poor, _setup(keys.ENCODER_SHARE, **encoder))
    check_announced(site, _setup(keys.ENCODER_SHARE, **encoder))  # ε 100 affords it
    check_announced(poor, _setup(None, **train))  # nothing announced: the stage decides
    foreign = {
        keys.TRAIN_CONFIG: ConfigRecord(replace(_train(), schema_fingerprint="0" * 64).to_config())
    }  # type: ignore[arg-type]
    with pytest.raises(SchemaMismatchError, match="differs from the server's") as mismatch:
        check_announced(site, _setup(keys.SECAGG_TRAIN, **foreign))
    assert public_reason(mismatch.value) == (
        "the site's schema differs from the server's (fingerprints in the site's log); "
        "the site must install the consortium's current schema"
    )
    assert FINGERPRINT[:12] in str(mismatch.value)  # in the site's own log only
    with pytest.raises(SiteConfigError, match=r"stage 'fit' this site does not know.*current"):
        check_announced(site, _setup("fit"))
    with pytest.raises(SiteConfigError, match=r"lacks its 'encoder-config' record"):
        check_announced(site, _setup(keys.ENCODER_SHARE, **train))
    assert len(PrivacyLedger.open(site.ledger_path, site="site-a").entries) == 1  # no charge


def test_one_release_is_checked_at_q_1_and_one_step(tmp_path: Path) -> None:
    site = _site(tmp_path, 100.0)
    _spend(site)
    ledger = PrivacyLedger.open(site.ledger_path, site="site-a")
    after = ledger.projected_epsilon(noise_multiplier=2.0, sample_rate=1.0, steps=1, delta=1e-5)
    assert after > ledger.epsilon(delta=1e-5)

    check_one_release(_site(tmp_path, after + 1e-6), noise_multiplier=2.0, accountant="rdp")
    with pytest.raises(BudgetExhaustedError):
        check_one_release(_site(tmp_path, after - 1e-6), noise_multiplier=2.0, accountant="rdp")
