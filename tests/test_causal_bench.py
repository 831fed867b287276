"""The causal benchmark's ceiling arm, verdict and summary (no training: fast)."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest

from shared.cohort import cohort_schema, generate_cohort
from simulations.benchmarks.causal import RESAMPLED, Dataset, synthesize, verdict
from simulations.benchmarks.causal_report import summarise


def _args(rows: int = 0) -> argparse.Namespace:
    return argparse.Namespace(synthetic_rows=rows)


def test_resampled_draws_real_rows_with_replacement() -> None:
    frame = generate_cohort(4, seed=1).reset_index(drop=True)
    frame["row"] = range(4)  # tells the drawn rows apart
    data = Dataset("toy", frame, cohort_schema(), true_ate=None)
    drawn, facts = synthesize(data, RESAMPLED, _args(10), [], seed=3)
    assert len(drawn) == 10
    pd.testing.assert_frame_equal(drawn, frame.iloc[drawn["row"]].reset_index(drop=True))
    assert drawn["row"].duplicated().any()  # 10 draws from 4 rows must repeat
    assert facts == {"sigma": None, "site_epsilon_max": None}
    same, _ = synthesize(data, RESAMPLED, _args(0), [], seed=3)
    assert len(same) == len(frame)  # default: as many rows as real


@pytest.mark.parametrize(
    ("ate", "low", "high", "within", "overlap"),
    [
        (-37.0, -38.0, -36.0, True, True),  # |−37 − (−38)| = 1 ≤ 5.7, intervals meet
        (-33.0, -34.0, -32.0, True, False),  # within 15% of −38, but no overlap
        (-30.0, -40.0, -20.0, False, True),  # 8 > 5.7 off, intervals overlap
    ],
)
def test_verdict_needs_both(
    ate: float, low: float, high: float, within: bool, overlap: bool
) -> None:
    real = {"ate": -37.5, "ci_low": -38.1, "ci_high": -36.8}
    syn = {"status": "ok", "ate": ate, "ci_low": low, "ci_high": high}
    out = verdict(real, syn, reference=-38.0)
    assert out == {"within_15pct": within, "ci_overlap": overlap, "pass": within and overlap}


def test_verdict_fails_an_unestimable_table() -> None:
    out = verdict({}, {"status": "one arm only"}, reference=3.0)
    assert out == {"within_15pct": False, "ci_overlap": False, "pass": False}


def test_summary_means_sds_and_counts() -> None:
    def doc(seed: int, ate: float, psi: float, ok: bool) -> dict[str, object]:
        arm = {"ate": ate, "within_15pct": ok, "ci_overlap": True, "pass": ok}
        return {
            "data": "nhefs",
            "seed": seed,
            "staged": {**arm, "effect_estimate": psi},
            RESAMPLED: {**arm, "ate": 3.0},
        }

    docs = [doc(0, 2.0, 3.0, False), doc(1, 4.0, 3.5, True), doc(2, 3.0, 4.0, True)]
    rows = {r["generator"]: r for r in summarise(docs, ["staged", RESAMPLED])}
    staged = rows["staged"]
    assert staged["ate_mean"] == pytest.approx(3.0)
    assert staged["ate_sd"] == pytest.approx(1.0)  # sample SD of 2, 4, 3
    assert staged["effect_estimate_mean"] == pytest.approx(3.5)
    assert staged["effect_estimate_sd"] == pytest.approx(0.5)
    assert (staged["within_15pct"], staged["ci_overlap"], staged["passed"]) == (2, 3, 2)
    assert "effect_estimate_mean" not in rows[RESAMPLED]
    assert rows[RESAMPLED]["ate_sd"] == pytest.approx(0.0)
