"""The run's plan: every site says, before any charge, whether it could finish the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import BudgetExhaustedError, LedgerError, SiteConfigError
from client.ledger import PrivacyLedger
from client.precheck import REPLAY_RECORD, check_plan
from client.settings import SiteSettings
from shared.accounting import epsilon_of
from shared.errors import ConfigError
from shared.run_plan import PlanRequest
from shared.schema import Schema

SCHEMA = Path(__file__).parents[1] / "shared" / "data" / "cohort_schema.json"
SIGMA, Q, STEPS = 1.2, 0.05, 40  # one training round: 40 steps at σ = 1.2, q = 0.05


def _site(tmp_path: Path, budget: float) -> SiteSettings:
    schema = tmp_path / "schema.json"
    if not schema.exists():
        shutil.copy(SCHEMA, schema)
    return SiteSettings(
        site_name="site-a",
        data_path=tmp_path / "data.csv",
        schema_path=schema,
        state_dir=tmp_path / "state",
        budget_epsilon=budget,
    )


def _plan(rounds: int, *, replay: str = "", effect: bool = False) -> PlanRequest:
    labels = ["training", *(["effect"] if effect else [])]
    return PlanRequest(
        labels=tuple(labels),
        noise_multipliers=(SIGMA, *([3.0] if effect else [])),
        sample_rates=(Q, *([1.0] if effect else [])),
        steps=(rounds * STEPS, *([1] if effect else [])),
        schema_fingerprint=Schema.load(SCHEMA).fingerprint(),
        replay_config=replay,
        round_steps=STEPS,
    )


def _eps(rounds: int) -> float:
    return epsilon_of([(SIGMA, Q, rounds * STEPS)], delta=1e-5)


def test_the_plan_round_trips_through_the_message_config() -> None:
    plan = _plan(10, replay="ab" * 32, effect=True)

    assert PlanRequest.from_config(plan.to_config()) == plan
    assert plan.describe() == "training σ=1.2 q=0.05 × 400; effect σ=3 q=1 × 1"


def test_a_malformed_plan_is_refused_with_its_rule() -> None:
    with pytest.raises(ConfigError, match="one σ, one q and one step count"):
        PlanRequest(("training",), (1.0, 2.0), (0.1,), (5,), schema_fingerprint="f")
    with pytest.raises(ConfigError, match=r"q in \(0, 1\]"):
        PlanRequest(("training",), (1.0,), (1.5,), (5,), schema_fingerprint="f")
    config = {**_plan(2).to_config(), "steps": [1.5]}
    with pytest.raises(ConfigError, match="'steps' must be a list of int"):
        PlanRequest.from_config(config)


def test_a_fresh_site_that_can_finish_gets_its_projected_epsilon(tmp_path: Path) -> None:
    site = _site(tmp_path, _eps(10) + 1e-6)

    assert check_plan(site, _plan(10)) == pytest.approx(_eps(10), rel=1e-9)
    assert (
        not site.ledger_path.exists()
        or not PrivacyLedger.open(site.ledger_path, site="site-a").entries
    )  # nothing charged


def test_a_site_that_cannot_finish_says_how_many_rounds_it_could_afford(tmp_path: Path) -> None:
    # Prepare: 4 rounds already spent; the budget holds 6 in all.
    site = _site(tmp_path, (_eps(6) + _eps(7)) / 2)
    ledger = PrivacyLedger.open(site.ledger_path, site="site-a")
    ledger.record(run="r", server_round=1, noise_multiplier=SIGMA, sample_rate=Q,
                  steps=4 * STEPS, max_grad_norm=1.0)  # fmt: skip

    # Execute / Assert: 10 more rounds do not fit; 2 would.
    with pytest.raises(
        BudgetExhaustedError,
        match=r"cannot finish this run: its remaining plan \(training σ=1.2 q=0.05 × 400\) would raise its "
        r"cumulative ε from .* could afford 2 of the 10 training round\(s\) left. Nothing was "
        "charged",
    ):
        check_plan(site, _plan(10))
    assert len(PrivacyLedger.open(site.ledger_path, site="site-a").entries) == 1
    check_plan(site, _plan(2))


def test_a_round_already_answered_is_left_out_of_the_projection(tmp_path: Path) -> None:
    # Prepare: the coordinator restarted before saving round 1, which the site answered
    # (and paid for); the site will re-send it for free.
    site = _site(tmp_path, (_eps(3) + _eps(4)) / 2)
    ledger = PrivacyLedger.open(site.ledger_path, site="site-a")
    ledger.record(run="r", server_round=1, noise_multiplier=SIGMA, sample_rate=Q,
                  steps=STEPS, max_grad_norm=1.0)  # fmt: skip
    record = {"request": "x", "config": "c" * 64, "sha256": "y"}
    (site.state_dir / REPLAY_RECORD).write_text(json.dumps(record), encoding="utf-8")

    # Execute / Assert: 3 rounds left, the first of them already paid: it fits.
    assert check_plan(site, _plan(3, replay="c" * 64)) == pytest.approx(_eps(3), rel=1e-9)
    with pytest.raises(BudgetExhaustedError, match="could afford 2 of the 3"):
        check_plan(site, _plan(3, replay="d" * 64))


def test_a_damaged_ledger_or_a_foreign_schema_declines_the_plan(tmp_path: Path) -> None:
    site = _site(tmp_path, 100.0)
    other = PlanRequest(("training",), (SIGMA,), (Q,), (STEPS,), schema_fingerprint="0" * 64)
    with pytest.raises(SiteConfigError, match="differs from the server's"):
        check_plan(site, other)

    site.state_dir.mkdir(parents=True)
    site.ledger_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(LedgerError):
        check_plan(site, _plan(1))


@settings(max_examples=15, deadline=None)
@given(spent=st.integers(0, 6), rounds=st.integers(1, 12), slack=st.floats(0.05, 0.95))
def test_the_affordable_round_count_is_the_largest_that_fits(
    tmp_path_factory: pytest.TempPathFactory, spent: int, rounds: int, slack: float
) -> None:
    # The budget lies strictly between k and k + 1 rounds' ε in all: k - spent fit.
    tmp = tmp_path_factory.mktemp("plan")
    k = spent + rounds // 2
    site = _site(tmp, _eps(k) + slack * (_eps(k + 1) - _eps(k)))
    if spent:
        PrivacyLedger.open(site.ledger_path, site="site-a").record(
            run="r", server_round=1, noise_multiplier=SIGMA, sample_rate=Q,
            steps=spent * STEPS, max_grad_norm=1.0,
        )  # fmt: skip

    with pytest.raises(BudgetExhaustedError, match=f"could afford {k - spent} of the {rounds}"):
        check_plan(site, _plan(rounds))


def test_the_report_never_lowers_a_sites_cumulative_epsilon() -> None:
    from server.report import merge_site

    sites: dict[str, dict[str, object]] = {}
    merge_site(sites, {"site": "a", "epsilon": 0.8, "steps": 90})
    merge_site(sites, {"site": "a", "epsilon": 0.0, "steps": 0})  # its ledger went unreadable
    assert sites["a"] == {"site": "a", "epsilon": 0.8, "steps": 90}
    merge_site(sites, {"site": "a", "epsilon": 0.9, "steps": 135})
    assert sites["a"]["epsilon"] == 0.9


def test_a_malformed_plan_reply_is_discarded_not_a_crash() -> None:
    from flwr.app import ConfigRecord, Message, Metadata, RecordDict

    from server.errors import ProtocolError
    from server.plan import parse_plan_reply
    from shared import keys

    content = RecordDict(
        {
            keys.PRIVACY_METRICS: ConfigRecord({keys.EPSILON: "x"}),  # not a MetricRecord
            keys.SITE_INFO: ConfigRecord({keys.SITE_NAME: "a", keys.STATUS: "affordable"}),
        }
    )
    meta = Metadata(
        run_id=1, message_id="", src_node_id=4, dst_node_id=0, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=60.0, message_type="train.plan_check",
    )  # fmt: skip
    with pytest.raises(ProtocolError, match="node 4 answered the run's plan with records of"):
        parse_plan_reply(Message(content=content, metadata=meta))  # type: ignore[call-arg]
