"""Tests for ``fedsynth audit`` (canaries, guessing, verdict, and one real tiny run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth.cli import main
from shared.audit_bound import epsilon_lower_bound
from shared.cohort import SCHEMA_PATH, cohort_schema, generate_cohort
from shared.errors import AuditError, ConfigError
from shared.tables import validate_frame
from simulations.audit.audit import (
    GUESS_MARGIN,
    AuditOutcome,
    count_correct,
    guesses_per_side,
)
from simulations.audit.canaries import draw_inclusion, make_canaries
from simulations.audit.report import AuditPlan, run_audit, verdict


# ------------------------------------------------------------------ canaries
def test_canaries_are_schema_valid_distinct_and_complete() -> None:
    schema = cohort_schema()

    canaries = make_canaries(schema, 200, np.random.default_rng(0))

    assert len(canaries) == 200
    assert not canaries.duplicated().any()
    assert canaries.notna().all().all()  # nullable columns are never left missing
    validate_frame(canaries.astype(object), schema)  # raises if any value is out of schema


def test_canaries_are_unlike_the_cohort() -> None:
    # Uniform over the documented range: far more spread than the real rows.
    canaries = make_canaries(cohort_schema(), 500, np.random.default_rng(1))
    real = generate_cohort(500, seed=1)

    assert canaries["ldl_baseline"].astype(float).std() > 1.5 * real["ldl_baseline"].std()
    assert canaries["age"].astype(float).min() < real["age"].quantile(0.01)


def test_too_few_canaries_are_refused() -> None:
    with pytest.raises(AuditError, match="--canaries 5 is too few"):
        make_canaries(cohort_schema(), 5, np.random.default_rng(0))


def test_inclusion_coins_are_fair() -> None:
    coins = draw_inclusion(20_000, np.random.default_rng(3))

    assert coins.dtype == bool
    assert abs(coins.mean() - 0.5) < 0.02


# ------------------------------------------------------------------ guessing
def test_count_correct_hand_example() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, False, True])

    # Top 2 guessed "in" (1 right), bottom 2 guessed "out" (1 right).
    assert count_correct(scores, included, 2) == (4, 2)
    with pytest.raises(AuditError, match="cannot make 8 guesses about 6 canaries"):
        count_correct(scores, included, 4)


@pytest.mark.parametrize("claimed", [1.0, 3.0])
def test_guesses_per_side_is_the_fewest_that_could_certify_the_claim(claimed: float) -> None:
    k = guesses_per_side(m=1000, claimed_epsilon=claimed, delta=1e-5)

    target = GUESS_MARGIN * claimed
    assert epsilon_lower_bound(m=1000, r=2 * k, v=2 * k, delta=1e-5) >= target - 1e-3
    assert epsilon_lower_bound(m=1000, r=2 * k - 2, v=2 * k - 2, delta=1e-5) < target


def test_guesses_per_side_caps_at_half_the_canaries() -> None:
    assert guesses_per_side(m=40, claimed_epsilon=8.0, delta=1e-5) == 20


# ------------------------------------------------------------------ verdict
def _outcome(bound: float) -> AuditOutcome:
    return AuditOutcome("run", 1.0, 1.0, 100, 60, bound, 1.0)


def test_verdict_says_too_weak_when_the_control_does_not_beat_the_claim() -> None:
    text = verdict(3.0, _outcome(0.0), _outcome(0.2))

    assert "TOO WEAK" in text
    assert "0.200" in text


def test_verdict_flags_a_violation_only_with_a_strong_control() -> None:
    assert "strong enough" in verdict(1.0, _outcome(0.3), _outcome(2.0))
    assert "EXCEEDS" in verdict(1.0, _outcome(1.5), _outcome(2.0))
    assert "NOT checked" in verdict(1.0, _outcome(0.3), None)


# ------------------------------------------------------------------ command line
def test_help_warns_against_forbidden_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "--help"])

    text = " ".join(capsys.readouterr().out.split())
    assert "forbid re-identification attempts" in text
    assert "No privacy ledger is opened or charged" in text


def test_data_without_schema_is_refused(tmp_path: Path) -> None:
    plan = AuditPlan(out=tmp_path, data=tmp_path / "site.csv", schema=None, overrides={})

    with pytest.raises(ConfigError, match="needs --schema"):
        run_audit(plan)


# ------------------------------------------------------------------ a real run
@pytest.mark.slow
def test_tiny_audit_end_to_end_control_beats_dp_and_report_is_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The acceptance in miniature, with real Opacus and no mocks: in the white-box
    # (default) mode the noiseless control's gradient canaries are all told apart and
    # certify more than the claimed ε, while the ε = 1 run's bound stays below it.
    generate_cohort(40, seed=1).to_csv(tmp_path / "site.csv", index=False)
    out = tmp_path / "audit"

    code = main(
        [
            "audit",
            "--data",
            str(tmp_path / "site.csv"),
            "--schema",
            str(SCHEMA_PATH),
            "--canaries",
            "40",
            "--epsilon",
            "1",
            "--rounds",
            "1",
            "--local-steps",
            "30",
            "--sample-rate",
            "0.5",
            "--out",
            str(out),
        ]
    )

    assert code == 0
    report = json.loads((out / "audit.json").read_text())
    dp, control = report["runs"]
    assert control["label"].startswith("positive control")
    assert control["noise_multiplier"] == 0.0
    assert control["correct"] > dp["correct"]
    assert control["correct"] == control["guesses"]
    assert report["positive_control_lower_bound"] > report["claimed_epsilon"] == 1.0
    assert report["audit_lower_bound"] <= report["claimed_epsilon"]
    assert "strong enough" in report["verdict"]
    assert report["k_plus"] == report["k_minus"] == dp["guesses"] // 2
    assert report["canaries"] == 40
    assert "Steinke" in report["method"]
    assert report["mode"] == "white-box" and "gradient canaries" in report["scoring"]
    assert control["max_grad_norm"] == report["settings"]["max_grad_norm"]  # clipping on
    assert "charges no site's budget" in report["ledger"]
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "audit.md"]
    md = (out / "audit.md").read_text()
    assert "positive-control lower bound" in md and report["verdict"] in md
    assert "mode `white-box`" in md
    assert "audit lower bound (95%)" in capsys.readouterr().out
