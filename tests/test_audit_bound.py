"""Unit and property tests for :mod:`shared.audit_bound` (one-run audit maths)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.audit_bound import epsilon_lower_bound, p_value
from shared.errors import AuditError


# ------------------------------------------------------------------ known values
def test_p_value_hand_computed_single_guess() -> None:
    # ε = 0 → q = 1/2; P[Bin(1, ½) ≥ 1] = ½, α = P[Bin = 0] = ½, plus 2·m·δ·α = 0.1.
    assert p_value(m=1, r=1, v=1, epsilon=0.0, delta=0.1) == pytest.approx(0.6)


def test_p_value_hand_computed_two_guesses() -> None:
    # ε = ln 3 → q = 3/4. P[Bin(2, ¾) = 2] = 0.5625; α = max(P[=1]/1, P[≤1]/2) = 0.375.
    p = p_value(m=5, r=2, v=2, epsilon=math.log(3.0), delta=0.01)
    assert p == pytest.approx(0.5625 + 2 * 5 * 0.01 * 0.375)


def test_lower_bound_all_correct_without_delta_matches_closed_form() -> None:
    # With δ = 0 and r = v: reject iff q^r ≤ 0.05, so ε* = logit(0.05^(1/r)).
    q = 0.05 ** (1 / 10)
    expected = math.log(q / (1 - q))  # ≈ 1.0519

    bound = epsilon_lower_bound(m=10, r=10, v=10, delta=0.0)

    assert bound == pytest.approx(expected, abs=2e-4)
    assert bound == pytest.approx(1.0519, abs=1e-3)


def test_delta_weakens_the_bound() -> None:
    strict = epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0)
    loose = epsilon_lower_bound(m=1000, r=100, v=100, delta=1e-5)

    assert 3.3 < loose < strict < 3.6


def test_chance_level_guessing_gives_zero() -> None:
    assert epsilon_lower_bound(m=1000, r=200, v=100, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, r=0, v=0, delta=1e-5) == 0.0


# ------------------------------------------------------------------ properties
counts = st.integers(min_value=1, max_value=300).flatmap(
    lambda r: st.tuples(st.just(r), st.integers(min_value=0, max_value=r - 1))
)


@settings(max_examples=40, deadline=None)
@given(counts)
def test_bound_is_monotone_in_correct_guesses(rv: tuple[int, int]) -> None:
    r, v = rv
    low = epsilon_lower_bound(m=1000, r=r, v=v, delta=1e-5)
    high = epsilon_lower_bound(m=1000, r=r, v=v + 1, delta=1e-5)

    assert high >= low - 1e-4


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=400))
def test_at_most_half_correct_never_certifies_anything(r: int) -> None:
    assert epsilon_lower_bound(m=1000, r=r, v=r // 2, delta=1e-5) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    counts,
    st.floats(min_value=0.0, max_value=8.0),
    st.floats(min_value=0.0, max_value=8.0),
)
def test_p_value_grows_with_epsilon(rv: tuple[int, int], e1: float, e2: float) -> None:
    r, v = rv
    lo, hi = sorted((e1, e2))
    p_lo = p_value(m=500, r=r, v=v, epsilon=lo, delta=1e-6)
    p_hi = p_value(m=500, r=r, v=v, epsilon=hi, delta=1e-6)

    assert p_lo <= p_hi + 1e-12


@settings(max_examples=30, deadline=None)
@given(counts)
def test_bound_is_rejected_just_below_and_not_above(rv: tuple[int, int]) -> None:
    r, v = rv
    bound = epsilon_lower_bound(m=1000, r=r, v=v, delta=1e-5)
    if bound > 0:
        assert p_value(m=1000, r=r, v=v, epsilon=bound, delta=1e-5) <= 0.05
    assert p_value(m=1000, r=r, v=v, epsilon=bound + 1e-3, delta=1e-5) > 0.05


# ------------------------------------------------------------------ input checks
def test_inconsistent_counts_are_refused() -> None:
    with pytest.raises(AuditError, match=r"correct \(5\) <= guesses \(3\)"):
        p_value(m=10, r=3, v=5, epsilon=1.0, delta=0.0)
    with pytest.raises(AuditError, match="confidence must lie strictly between"):
        epsilon_lower_bound(m=10, r=3, v=3, delta=0.0, confidence=1.0)
    with pytest.raises(AuditError, match="δ must lie in"):
        p_value(m=10, r=3, v=3, epsilon=1.0, delta=2.0)
