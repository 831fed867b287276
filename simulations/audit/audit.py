"""One audit: canaries in, one training run, guesses, an ε lower bound.

Steps (Steinke, Nasr & Jagielski, NeurIPS 2023, their one-run game):

1. draw m canaries and a secret fair coin per canary. ``white-box`` (default):
   Dirac gradient canaries, C on one coordinate of the parameters each
   (:mod:`simulations.audit.gradient`); ``black-box``: schema-valid records
   (:mod:`simulations.audit.canaries`);
2. run the site's real contribution (:mod:`simulations.audit.mechanism`) with the
   canaries whose coin came up "in": white-box, each is Poisson-sampled at every
   step and added to the clipped sum before Opacus's noise; black-box, the records
   join the site's rows;
3. score every canary. White-box: the released gradients' residual on the canary's
   coordinate, summed over every DP-SGD step. Black-box: its loss under a
   *reference* model minus its loss under the final trained model; the reference
   is the same training on the site's rows plus *all* canaries (another
   sampling/noise seed). Neither score looks at the coins, so the test stays valid;
4. guess "in" for the k₊ highest scores, "out" for the k₋ lowest, abstain on the rest;
5. the ε lower bound is the largest ε that the number of correct guesses rejects
   at 95% (:func:`shared.audit_bound.epsilon_lower_bound`, with the run's δ).

k₊ = k₋ = k is fixed before training, from m and the claimed ε only: the
smallest k whose 2k guesses, if all correct, would certify at least
:data:`GUESS_MARGIN` × the claimed ε (capped at m/2). It is never tuned on the scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from shared.audit_bound import epsilon_lower_bound
from shared.config import RunSettings
from shared.errors import AuditError
from shared.models import build_generator
from shared.models.base import GeneratorFamily
from shared.schema import Schema
from simulations.audit.canaries import draw_inclusion, make_canaries
from simulations.audit.gradient import DiracCanaries, DiracScorer, layout, pick_coordinates
from simulations.audit.mechanism import Mechanism, per_row_loss, train_contribution

#: k is chosen so perfect guessing could certify this multiple of the claimed ε.
GUESS_MARGIN = 1.25
#: Scoring modes: per-step white-box over the training transcript, or final-model losses.
MODES = ("white-box", "black-box")


@dataclass(frozen=True)
class AuditOutcome:
    """What one audited training run gave (all figures about canaries only)."""

    label: str
    noise_multiplier: float
    max_grad_norm: float
    guesses: int
    correct: int
    epsilon_lower_bound: float
    seconds: float


def guesses_per_side(*, m: int, claimed_epsilon: float, delta: float) -> int:
    """k₊ = k₋: the fewest guesses per side that could certify the claim with margin.

    Depends on m, the claimed ε and δ only (never on scores), as the test requires.
    """
    target = GUESS_MARGIN * claimed_epsilon
    for k in range(1, m // 2 + 1):
        if epsilon_lower_bound(m=m, r=2 * k, v=2 * k, delta=delta, tol=1e-3) >= target:
            return k
    return m // 2


def count_correct(scores: np.ndarray, included: np.ndarray, k: int) -> tuple[int, int]:
    """Guess "in" for the k highest scores and "out" for the k lowest.

    Returns
    -------
    (int, int)
        Number of guesses made and number of correct guesses.
    """
    if 2 * k > len(scores):
        raise AuditError(f"cannot make {2 * k} guesses about {len(scores)} canaries; lower k")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k], order[len(order) - k :]
    return 2 * k, int(included[top].sum() + (~included[bottom]).sum())


@dataclass(frozen=True)
class AuditInputs:
    """The site's encoded rows and the canaries, shared by every audited run.

    ``canaries`` are the encoded record canaries (black-box), ``coordinates`` the
    Dirac canaries' coordinates (white-box); ``included`` are the coins of either.
    """

    schema: Schema
    settings: RunSettings
    site_rows: torch.Tensor
    canaries: torch.Tensor
    coordinates: torch.Tensor
    included: np.ndarray
    seed: int

    @classmethod
    def prepare(
        cls, schema: Schema, settings: RunSettings, site: pd.DataFrame, *, m: int, seed: int
    ) -> AuditInputs:
        """Encode the site's rows, draw canaries and their coins from ``seed``."""
        canary_rng, coin_rng, coordinate_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
        )
        family = build_generator(schema, settings.model)
        canaries = make_canaries(schema, m, canary_rng)
        size = sum(shape.numel() for _, shape in layout(family.private_module()))
        return cls(
            schema=schema,
            settings=settings,
            site_rows=torch.from_numpy(family.encode(site)),
            canaries=torch.from_numpy(family.encode(canaries)),
            coordinates=pick_coordinates(size, m, coordinate_rng),
            included=draw_inclusion(m, coin_rng),
            seed=seed,
        )


def audit_run(
    inputs: AuditInputs,
    mechanism: Mechanism,
    *,
    k: int,
    device: torch.device,
    mode: str = "white-box",
) -> AuditOutcome:
    """Train with ``mechanism``, score the canaries in ``mode``, guess, and bound ε."""
    if mode not in MODES:
        raise AuditError(f"unknown audit mode {mode!r}; use one of {', '.join(MODES)}")
    start = time.perf_counter()
    settings = inputs.settings

    def train(
        data: torch.Tensor,
        tag: str,
        scorer: DiracScorer | None = None,
        canaries: DiracCanaries | None = None,
    ) -> GeneratorFamily:
        return train_contribution(
            inputs.schema,
            settings,
            data,
            mechanism=mechanism,
            seed=inputs.seed,
            tag=tag,
            device=device,
            scorer=scorer,
            canaries=canaries,
        )

    if mode == "white-box":
        family = build_generator(inputs.schema, settings.model)
        scorer = DiracScorer(
            family,
            inputs.site_rows,
            inputs.coordinates,
            sample_rate=settings.sample_rate,
            max_grad_norm=mechanism.max_grad_norm,
            seed=inputs.seed,
            expected_batch=settings.expected_batch,
        )
        hook = DiracCanaries(
            layout(family.private_module()),
            inputs.coordinates,
            inputs.included,
            sample_rate=settings.sample_rate,
            max_grad_norm=mechanism.max_grad_norm,
            seed=inputs.seed + 1,
        )
        train(inputs.site_rows, "target", scorer, hook)
        scores = scorer.scores.numpy()
    else:
        mask = torch.from_numpy(inputs.included)
        target = train(torch.cat([inputs.site_rows, inputs.canaries[mask]]), "target")
        reference = train(torch.cat([inputs.site_rows, inputs.canaries]), "reference")
        scores = per_row_loss(reference, inputs.canaries, seed=inputs.seed) - per_row_loss(
            target, inputs.canaries, seed=inputs.seed
        )
    guesses, correct = count_correct(scores, inputs.included, k)
    bound = epsilon_lower_bound(
        m=len(scores), r=guesses, v=correct, delta=inputs.settings.delta, confidence=0.95
    )
    return AuditOutcome(
        label=mechanism.label,
        noise_multiplier=mechanism.noise_multiplier,
        max_grad_norm=mechanism.max_grad_norm,
        guesses=guesses,
        correct=correct,
        epsilon_lower_bound=bound,
        seconds=time.perf_counter() - start,
    )
