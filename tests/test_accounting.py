"""Unit tests for :mod:`shared.accounting`: ε of a mechanism history and noise calibration."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from shared.accounting import RDP_ORDERS, calibrate_noise, epsilon_of
from shared.errors import AccountingError

DELTA = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


def _independent_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    orders = list(RDP_ORDERS)
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


# ------------------------------------------------------------------ known values
@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [(1.1, 0.01, 1000), (0.8, 0.1, 50), (5.0, 1.0, 10), (2.0, 0.001, 100_000)],
)
def test_epsilon_matches_independent_rdp_computation(sigma: float, q: float, steps: int) -> None:
    # Execute
    eps = epsilon_of([(sigma, q, steps)], delta=DELTA)

    # Assert
    assert eps == pytest.approx(_independent_epsilon(sigma, q, steps, DELTA), rel=1e-12)


def test_epsilon_of_reference_point() -> None:
    # σ=1.1, q=0.01, 1000 steps, δ=1e-5 under RDP with RDP_ORDERS.
    assert epsilon_of([(1.1, 0.01, 1000)], delta=DELTA) == pytest.approx(1.71177, abs=1e-4)


def test_rdp_orders_extend_opacus_defaults() -> None:
    # Prepare
    defaults = tuple(RDPAccountant.DEFAULT_ALPHAS)

    # Execute / Assert
    assert RDP_ORDERS[: len(defaults)] == defaults
    assert RDP_ORDERS[len(defaults) :] == (*range(64, 257, 8), *range(288, 1025, 32))
    assert len(set(RDP_ORDERS)) == len(RDP_ORDERS)


@pytest.mark.parametrize("history", [[], [(1.0, 0.1, 0)], [(0.5, 0.2, 0), (3.0, 0.5, 0)]])
def test_empty_history_costs_nothing(history: list[tuple[float, float, int]]) -> None:
    assert epsilon_of(history, delta=DELTA) == 0.0


def test_composition_equals_one_long_run() -> None:
    # Execute
    split = epsilon_of([(1.1, 0.02, 300), (1.1, 0.02, 700)], delta=DELTA)
    whole = epsilon_of([(1.1, 0.02, 1000)], delta=DELTA)

    # Assert
    assert split == pytest.approx(whole, rel=1e-12)


def test_heterogeneous_composition_exceeds_each_part() -> None:
    # Execute
    first = epsilon_of([(1.0, 0.05, 200)], delta=DELTA)
    second = epsilon_of([(2.0, 0.1, 300)], delta=DELTA)
    both = epsilon_of([(1.0, 0.05, 200), (2.0, 0.1, 300)], delta=DELTA)

    # Assert
    assert max(first, second) < both <= first + second


def test_prv_accountant_is_available_and_close_to_rdp() -> None:
    # Execute
    rdp = epsilon_of([(1.1, 0.01, 1000)], delta=DELTA)
    prv = epsilon_of([(1.1, 0.01, 1000)], delta=DELTA, accountant="prv")

    # Assert: PRV is the tighter accountant, but of the same magnitude.
    assert 0.5 * rdp < prv <= rdp


# ------------------------------------------------------------------ calibration
def test_calibrate_noise_known_value() -> None:
    # Execute
    sigma = calibrate_noise(target_epsilon=1.0, delta=DELTA, sample_rate=1 / 9, steps=450)

    # Assert
    assert sigma == pytest.approx(9.65, abs=0.1)
    assert epsilon_of([(sigma, 1 / 9, 450)], delta=DELTA) <= 1.0


@pytest.mark.parametrize(("target", "q", "steps"), [(3.0, 0.1, 150), (0.5, 0.02, 2000)])
def test_calibrate_noise_lands_at_or_just_below_target(target: float, q: float, steps: int) -> None:
    # Execute
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps)
    spent = epsilon_of([(sigma, q, steps)], delta=DELTA)

    # Assert
    assert 0.98 * target <= spent <= target


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("delta", [0.0, -1e-5, 1.0, 2.0])
def test_bad_delta_is_refused(delta: float) -> None:
    with pytest.raises(AccountingError, match=r"δ must lie strictly between 0 and 1"):
        epsilon_of([(1.0, 0.1, 10)], delta=delta)


@pytest.mark.parametrize("q", [1.5, 0.0, -0.1])
def test_bad_sample_rate_is_refused(q: float) -> None:
    with pytest.raises(AccountingError, match=r"sampling rate q must lie in \(0, 1\]"):
        epsilon_of([(1.0, q, 10)], delta=DELTA)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_noise_multiplier_is_refused(sigma: float) -> None:
    with pytest.raises(AccountingError, match="noise multiplier σ must be a positive number"):
        epsilon_of([(sigma, 0.1, 10)], delta=DELTA)


def test_unknown_accountant_is_refused() -> None:
    expected = re.escape("unknown accountant 'gdp'; use one of ['rdp', 'prv']")
    with pytest.raises(AccountingError, match=expected):
        epsilon_of([(1.0, 0.1, 10)], delta=DELTA, accountant="gdp")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"target_epsilon": 0.0}, "target ε must be a positive number"),
        ({"target_epsilon": float("inf")}, "target ε must be a positive number"),
        ({"delta": 0.0}, "δ must lie strictly between 0 and 1"),
        ({"sample_rate": 1.5}, r"sampling rate q must lie in \(0, 1\]"),
        ({"steps": 0}, "cannot calibrate noise for 0 steps"),
        ({"steps": -3}, "steps must be >= 0"),
    ],
)
def test_calibrate_noise_refuses_bad_input(kwargs: dict[str, float], expected: str) -> None:
    # Prepare
    args = {"target_epsilon": 1.0, "delta": DELTA, "sample_rate": 0.1, "steps": 100, **kwargs}

    # Execute / Assert
    with pytest.raises(AccountingError, match=expected):
        calibrate_noise(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------------- hypothesis
_SIGMA = st.floats(0.5, 20.0)
_Q = st.floats(1e-4, 0.2)
_STEPS = st.integers(1, 5000)
_DELTA = st.sampled_from([1e-3, 1e-5, 1e-8])


@settings(max_examples=12, deadline=None)
@given(_SIGMA, _Q, _STEPS, st.integers(0, 5000), _DELTA)
def test_epsilon_is_non_decreasing_in_steps(
    sigma: float, q: float, steps: int, more: int, delta: float
) -> None:
    # Execute
    fewer_eps = epsilon_of([(sigma, q, steps)], delta=delta)
    more_eps = epsilon_of([(sigma, q, steps + more)], delta=delta)

    # Assert
    assert more_eps >= fewer_eps * (1 - 1e-12)


@settings(max_examples=12, deadline=None)
@given(_SIGMA, st.floats(0.0, 20.0), _Q, _STEPS, _DELTA)
def test_epsilon_is_non_increasing_in_sigma(
    sigma: float, extra: float, q: float, steps: int, delta: float
) -> None:
    # Execute
    less_noise = epsilon_of([(sigma, q, steps)], delta=delta)
    more_noise = epsilon_of([(sigma + extra, q, steps)], delta=delta)

    # Assert
    assert more_noise <= less_noise * (1 + 1e-12)


@settings(max_examples=12, deadline=None)
@given(_SIGMA, _Q, st.integers(1, 3000), st.integers(1, 3000))
def test_composition_of_same_mechanism_is_additive_in_steps(
    sigma: float, q: float, a: int, b: int
) -> None:
    # Execute
    split = epsilon_of([(sigma, q, a), (sigma, q, b)], delta=DELTA)
    whole = epsilon_of([(sigma, q, a + b)], delta=DELTA)

    # Assert
    assert split == pytest.approx(whole, rel=1e-9)


def test_the_written_out_orders_are_opacus_defaults() -> None:
    from opacus.accountants import RDPAccountant

    from shared.accounting import OPACUS_DEFAULT_ORDERS

    assert list(OPACUS_DEFAULT_ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.8, 1.3]), st.sampled_from([0.05, 0.2]), st.integers(1, 30)),
        min_size=1,
        max_size=6,
    )
)
def test_equal_mechanisms_compose_as_their_summed_steps(
    history: list[tuple[float, float, int]],
) -> None:
    """One entry per step (a distributed ledger) gives the ε of the summed steps, by Opacus."""
    from tests.e2e import independent_epsilon

    assert epsilon_of(history, delta=1e-5) == pytest.approx(
        independent_epsilon(history, 1e-5), rel=1e-9
    )
