"""The exact-match check and its chance spread (random re-splits of the references)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.evaluation.privacy import RESPLITS, resplit_excess
from simulations.benchmarks.frontier_checks import acceptance

patterns = st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(syn=patterns, ref_a=patterns, ref_b=patterns)
def test_the_observed_excess_is_the_difference_of_match_rates(
    syn: list[int], ref_a: list[int], ref_b: list[int]
) -> None:
    s, a, b = (np.array(x, dtype=np.uint64) for x in (syn, ref_a, ref_b))
    rng = np.random.default_rng(0)

    observed, null = resplit_excess(s, a, b, draws=20, rng=rng)
    swapped, _ = resplit_excess(s, b, a, draws=1, rng=rng)

    assert observed == pytest.approx(np.isin(s, a).mean() - np.isin(s, b).mean())
    assert swapped == pytest.approx(-observed)
    assert null.shape == (20,) and np.all(np.abs(null) <= 1.0 + 1e-9)


def _discrete_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    # 40 patterns with geometric frequencies: a few common, many rare (as RAND HIE's
    # all-zero rows are), so presence in a 150-row reference is a matter of chance.
    return rng.geometric(0.12, size=n).clip(max=40).astype(np.uint64)


def test_a_generator_that_never_saw_the_rows_is_within_chance() -> None:
    # Under the null, p-values are about uniform: few fall below 5 %.
    rng = np.random.default_rng(1)
    p_values = []
    for _ in range(150):
        train, holdout, synthetic = (_discrete_rows(rng, n) for n in (150, 150, 400))
        observed, null = resplit_excess(synthetic, train, holdout, draws=99, rng=rng)
        p_values.append((1 + np.sum(null >= observed - 1e-12)) / 100)
    assert np.mean(np.array(p_values) <= 0.05) < 0.12
    assert np.mean(p_values) == pytest.approx(0.5, abs=0.1)


def test_copies_of_training_rows_are_far_beyond_chance() -> None:
    rng = np.random.default_rng(2)
    train, holdout = _discrete_rows(rng, 150), _discrete_rows(rng, 150)
    rare = np.arange(1000, 1150, dtype=np.uint64)  # 150 unique rows, half in train
    train[:75], holdout[:75] = rare[:75], rare[75:]
    synthetic = np.concatenate([_discrete_rows(rng, 300), np.repeat(rare[:75], 2)])

    observed, null = resplit_excess(synthetic, train, holdout, draws=RESPLITS, rng=rng)

    assert observed > 0.25  # the 150 copies are 1/3 of the rows; the rest is chance
    assert np.sum(null >= observed) == 0
    assert observed > 6 * null.std()


def test_copies_of_unique_rows_among_unique_rows_are_caught() -> None:
    # All-unique rows (the cohort's continuous columns): only the copies match. In the
    # null each copied pattern lands in the training part with probability 0.8, so k
    # copies stand 0.5·√k SE above chance: 2.7 for 30 (and for 10 over 3 seeds).
    rng = np.random.default_rng(3)
    rows = rng.permutation(np.arange(1, 20_001, dtype=np.uint64))
    train, holdout, synthetic = rows[:7200], rows[7200:9000], rows[9000:16200].copy()
    synthetic[:30] = train[:30]

    observed, null = resplit_excess(synthetic, train, holdout, draws=RESPLITS, rng=rng)

    assert observed == pytest.approx(30 / 7200)
    assert null.mean() == pytest.approx(0.6 * 30 / 7200, abs=0.2 * 30 / 7200)
    assert (observed - null.mean()) / null.std() > 2.5


def test_unequal_sizes_shift_the_null_not_the_excess_over_it() -> None:
    rng = np.random.default_rng(4)
    excess = []
    for _ in range(60):
        train, holdout, synthetic = (_discrete_rows(rng, n) for n in (600, 150, 400))
        observed, null = resplit_excess(synthetic, train, holdout, draws=99, rng=rng)
        assert null.mean() > 0  # the larger part holds more of the rare patterns
        excess.append(observed - null.mean())
    assert np.mean(excess) == pytest.approx(0.0, abs=3 * np.std(excess) / np.sqrt(60))


def _summary(excess: float, sd: float, seeds: int) -> pd.DataFrame:
    row = {
        "table": "t",
        "family": "f",
        "placement": "local",
        "eps": 1.0,
        "sites": 5,
        "auc_gb": 0.8,
        "tv_similarity": 0.95,
        "association_ratio": 0.3,
        "dcr_share": 0.5,
        "exact_match": 0.01 + excess,
        "exact_match_chance": 0.01,
        "exact_match_excess": excess,
        "exact_match_resplit_var": sd**2,
        "exact_match_seeds": seeds,
    }
    return pd.DataFrame([row, {**row, "placement": "pooled-dp", "sites": 0}])


@pytest.mark.parametrize(
    ("excess", "sd", "seeds", "verdict"),
    [
        (0.0007, 0.0015, 3, "PASS"),  # 0.8 SE
        (-0.003, 0.0015, 3, "PASS"),
        (0.0030, 0.0015, 3, "FAIL"),  # 3.5 SE
        (0.0005, 0.0, 3, "FAIL"),  # no chance spread: any excess fails
        (0.0, 0.0, 3, "PASS"),
    ],
)
def test_the_frontier_fails_only_an_excess_beyond_chance(
    excess: float, sd: float, seeds: int, verdict: str
) -> None:
    checks = {c.name: c for c in acceptance(_summary(excess, sd, seeds))}
    check = checks["exact match <= chance (every ε)"]
    assert check.verdict == verdict
    assert f"worst excess over chance {excess:+.4f}" in check.detail
