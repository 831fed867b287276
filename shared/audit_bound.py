"""Empirical ε lower bounds from one training run (pure maths).

Implements the hypothesis test of Steinke, Nasr & Jagielski, "Privacy Auditing
with One (1) Training Run" (NeurIPS 2023). m canaries are each included in the
training set independently with probability 1/2; an auditor makes r guesses
("in"/"out", abstaining on the rest) and v of them are correct. Under an
(ε, δ)-DP mechanism the number of correct guesses is stochastically dominated by
Binomial(r, e^ε / (1 + e^ε)) up to a δ term; their p-value for an (ε, δ)-DP
null hypothesis is

    p(ε) = P[Bin(r, q) ≥ v] + 2·m·δ · max_{1≤i≤v} (1/i)·P[v − i ≤ Bin(r, q) < v],
    q = e^ε / (1 + e^ε).

The ε lower bound at confidence 1 − β is the largest ε with p(ε) < β: every
smaller ε is rejected, so the mechanism is not (ε, δ)-DP, except with
probability β over the canaries' coin flips.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from shared.errors import AuditError

#: Citation printed in every audit report.
CITATION = (
    'T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run", '
    "NeurIPS 2023 (their p-value for an (ε, δ)-DP null hypothesis, δ included)"
)
_EPS_MAX = 50.0


def _check_counts(*, m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise AuditError(
            f"audit counts must satisfy 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m}); "
            "count only non-abstaining guesses"
        )


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` under (ε, δ)-DP.

    Parameters
    ----------
    m : int
        Number of canaries (each included with probability 1/2).
    r : int
        Number of guesses made (abstentions excluded).
    v : int
        Number of correct guesses.
    epsilon : float
        ε of the null hypothesis (≥ 0).
    delta : float
        δ of the null hypothesis, in [0, 1].

    Returns
    -------
    float
        An upper bound on the p-value, clipped to [0, 1].
    """
    _check_counts(m=m, r=r, v=v)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise AuditError(f"ε must be a finite number >= 0, got {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise AuditError(f"δ must lie in [0, 1], got {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    # pmf of v-1, v-2, ..., 0: the cumulative sums are P[v - i <= Bin < v].
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(
    *, m: int, r: int, v: int, delta: float, confidence: float = 0.95, tol: float = 1e-4
) -> float:
    """Largest ε that ``v`` correct guesses out of ``r`` reject at ``confidence``.

    Parameters
    ----------
    m, r, v : int
        Canaries, guesses, correct guesses (see :func:`p_value`).
    delta : float
        δ of the claimed guarantee.
    confidence : float
        1 − β, e.g. 0.95.
    tol : float
        Absolute precision of the returned ε.

    Returns
    -------
    float
        ε lower bound (0.0 when even ε = 0 is not rejected).
    """
    if not 0.0 < confidence < 1.0:
        raise AuditError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    beta = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < beta

    if not rejected(0.0):
        return 0.0
    # p(ε) grows with ε, so the rejected set is an interval [0, ε*): bisect for ε*.
    lo, hi = 0.0, 1.0
    while rejected(hi) and hi < _EPS_MAX:
        lo, hi = hi, 2.0 * hi
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo
