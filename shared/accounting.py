"""Privacy accounting maths: pure functions over Opacus's accountants.

A *mechanism history* is a list of ``(noise_multiplier σ, sample_rate q, steps)``
triples, the same shape as ``opacus.accountants.IAccountant.history``. The ε of a
whole history is computed in one composition, so heterogeneous runs (different
σ or q) compose correctly and the result is always cumulative.

Notes
-----
The RDP accountant follows Mironov, "Rényi Differential Privacy" (CSF 2017) and
Mironov, Talwar & Zhang, "Rényi DP of the Sampled Gaussian Mechanism" (2019);
PRV follows Gopi, Lee & Wutschitz, "Numerical Composition of DP" (NeurIPS 2021).
Both assume Poisson subsampling, add/remove neighbouring datasets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from shared.errors import AccountingError

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
Mechanism = tuple[float, float, int]
#: Opacus's default Rényi orders (``RDPAccountant.DEFAULT_ALPHAS``; a test checks they
#: agree). Written out so that importing this module does not import Opacus and torch:
#: the ClientApp's protocol-only messages (secure aggregation) start faster without them.
OPACUS_DEFAULT_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(12, 64)),
)
#: Rényi orders used by the RDP accountant: Opacus's defaults plus larger orders,
#: which give tighter (still valid) bounds when σ is small and ε large.
RDP_ORDERS: tuple[float, ...] = (
    *OPACUS_DEFAULT_ORDERS,
    *range(64, 257, 8),
    *range(288, 1025, 32),
)


def _options(accountant: str) -> dict[str, object]:
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise AccountingError(f"δ must lie strictly between 0 and 1, got {delta}")


def _check_mechanism(sigma: float, q: float, steps: int) -> None:
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise AccountingError(f"noise multiplier σ must be a positive number, got {sigma}")
    if not 0.0 < q <= 1.0:
        raise AccountingError(f"sampling rate q must lie in (0, 1], got {q}")
    if steps < 0:
        raise AccountingError(f"steps must be >= 0, got {steps}")


def epsilon_of(history: Sequence[Mechanism], *, delta: float, accountant: str = "rdp") -> float:
    """Cumulative ε of a sequence of sampled Gaussian mechanisms.

    Parameters
    ----------
    history : sequence of (σ, q, steps)
        Noise multiplier σ (noise std / clip norm C), Poisson rate q and number of steps.
    delta : float
        Target δ (probability of failure of the guarantee).
    accountant : {"rdp", "prv"}
        Opacus accountant to compose with.

    Returns
    -------
    float
        ε such that the whole history is (ε, δ)-DP; 0.0 for an empty history.
    """
    _check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r}; use one of {list(ACCOUNTANTS)}")
    merged: dict[tuple[float, float], int] = {}
    for s, q, k in history:
        if int(k) > 0:
            _check_mechanism(float(s), float(q), int(k))
            key = (float(s), float(q))
            merged[key] = merged.get(key, 0) + int(k)
    # k1 then k2 steps of one mechanism compose exactly as k1 + k2 steps (both
    # accountants compose self-compositions), so equal (σ, q) entries are merged:
    # a distributed run's ledger holds one entry per step, and the accountant's cost
    # grows with the number of entries, not of steps.
    entries = tuple((s, q, k) for (s, q), k in merged.items())
    if not entries:
        return 0.0
    return _composed_epsilon(entries, float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _composed_epsilon(entries: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    # Pure function of public parameters, so caching is safe; it matters because the
    # ledger re-composes the whole history on every check.
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(entries)
    # The RDP → (ε, δ) conversion can dip just below 0 for tiny mechanisms; ε ≥ 0 always.
    return max(0.0, float(acc.get_epsilon(delta=delta, **_options(accountant))))


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """Smallest noise multiplier σ whose ``steps`` steps at rate q stay within ε.

    Parameters
    ----------
    target_epsilon : float
        Budget ε to land on (not exceed) after ``steps`` steps.
    delta : float
        Target δ.
    sample_rate : float
        Poisson sampling rate q.
    steps : int
        Planned DP-SGD steps (rounds × local steps).
    accountant : {"rdp", "prv"}

    Returns
    -------
    float
        σ (noise standard deviation in units of the clip norm C).
    """
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise AccountingError(f"target ε must be a positive number, got {target_epsilon}")
    _check_mechanism(1.0, sample_rate, steps)
    if steps == 0:
        raise AccountingError("cannot calibrate noise for 0 steps")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.005,
                **_options(accountant),
            )
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise AccountingError(
            f"ε = {target_epsilon:g} (δ = {delta:g}) cannot be reached with {steps} steps at "
            f"q = {sample_rate:g}: no noise level Opacus searches gets that low ({exc}). "
            "Raise --epsilon, or plan fewer steps (--rounds, --local-steps) or a smaller "
            "--sample-rate"
        ) from None
    # get_noise_multiplier stops within a tolerance; make sure we land at or below ε.
    while (
        epsilon_of([(sigma, sample_rate, steps)], delta=delta, accountant=accountant)
        > target_epsilon
    ):
        sigma *= 1.002
    return sigma
