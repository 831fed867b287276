"""The site's part of the DP effect calibration: one noisy release of AIPW score sums.

Order of operations, each step failing closed (as for a training round):

1. load the site's schema and check its fingerprint equals the server's;
2. rebuild the released generator from the final global weights, load and encode
   the table, and compute the exact ``(Σ φ, w·n_a, n)`` (:func:`shared.models.staged_effect.effect_sums`);
   a bad table or damaged weights stop here: nothing charged or sent;
3. under the ledger lock (:func:`client.oneshot.charge_and_release`): check that one
   Gaussian release at σ_e fits the remaining budget, add the noise, record it;
4. only then reply with the noisy vector.

The exact sums never leave this module; only ``sums + N(0, (σ_e Δ)²)`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict

from client.errors import SiteConfigError
from client.oneshot import ReleaseResult, answer_release, charge_and_release, release_reply
from client.settings import SiteSettings
from client.site import model_and_rows
from shared import keys
from shared.effect import EffectRequest, add_effect_noise, effect_length, effect_sensitivity
from shared.models.staged_effect import effect_sums

log = logging.getLogger("fedsynth.client")


def exact_sums(
    site: SiteSettings, request: EffectRequest, state: dict[str, torch.Tensor]
) -> np.ndarray:
    """Steps 1–2: the site's exact ``(Σ φ_1.., w·n_1.., n)`` (never sent)."""
    with model_and_rows(
        site, fingerprint=request.schema_fingerprint, model=request.model, state=state
    ) as (family, rows):
        sums = effect_sums(family, np.asarray(rows))
    if sums.shape != (effect_length(request.arms),):
        raise SiteConfigError(
            f"the schema's treatment has {(sums.shape[0] + 1) // 2} arms but the server expects "
            f"{request.arms}; install the consortium's current schema at this site"
        )
    return sums


def release_sums(
    site: SiteSettings, request: EffectRequest, sums: np.ndarray, *, run: str
) -> ReleaseResult:
    """Step 3: budget check, Gaussian noise, durable ledger record (in that order)."""
    result = charge_and_release(
        site,
        noise_multiplier=request.noise_multiplier,
        sensitivity=effect_sensitivity(request.arms),
        accountant=request.accountant,
        ledger_round=request.ledger_round,
        run=run,
        noisy=lambda rng: add_effect_noise(
            sums, noise_multiplier=request.noise_multiplier, arms=request.arms, rng=rng
        ),
    )
    if result.sent:
        log.info(
            "site %s: released noisy effect sums (σ_e=%.4g), cumulative ε=%.4f",
            site.site_name,
            request.noise_multiplier,
            result.epsilon,
        )
    return result


def reply_content(
    site: SiteSettings | None, request: EffectRequest | None, result: ReleaseResult
) -> RecordDict:
    """The reply: only the fields in :data:`shared.keys.EFFECT_REPLY_FIELDS`."""
    return release_reply(
        site,
        result,
        noise_multiplier=request.noise_multiplier if request else 0.0,
        sensitivity=effect_sensitivity(request.arms) if request else 0.0,
        accountant=request.accountant if request else "",
        schema_fingerprint=request.schema_fingerprint if request else "",
        record=(keys.EFFECT_ARRAYS, keys.EFFECT_SUMS),
    )


def handle_effect(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Answer the effect calibration (errors become a decline with a safe reason)."""

    def run_stage(
        site: SiteSettings, request: EffectRequest, content: RecordDict, run: str
    ) -> ReleaseResult:
        state = content[keys.GLOBAL_ARRAYS].to_torch_state_dict()  # type: ignore[union-attr]
        return release_sums(site, request, exact_sums(site, request, state), run=run)

    return answer_release(
        msg,
        context,
        public_reason,
        stage="effect calibration",
        parse=lambda content: EffectRequest.from_config(dict(content[keys.EFFECT_CONFIG])),
        run_stage=run_stage,
        reply=reply_content,
    )
