"""The site's part of a release family's fit: one noisy release of a stage's statistics.

Order of operations, each step failing closed (as for a training round):

1. load the site's schema and check its fingerprint equals the server's;
2. rebuild the model as the server has fitted it so far, load and encode the
   table, and compute the stage's exact statistics; check that their length and
   L2 sensitivity are those the request announced (the site is charged for the
   announced mechanism, never another). A bad table, damaged weights or a
   mismatch stop here: nothing charged or sent;
3. under the ledger lock (:func:`client.oneshot.charge_and_release`): check that
   one Gaussian release at σ_s (recorded as ``(σ_s, q = 1, 1 step)`` with Δ_s in
   place of the clip norm) fits the remaining budget, add the noise, record it;
4. only then reply with the noisy vector.

The exact statistics never leave this module; only ``statistics + N(0, (σ_s Δ_s)²)``
does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict

from client.errors import SiteConfigError
from client.oneshot import ReleaseResult, answer_release, charge_and_release, release_reply
from client.settings import SiteSettings
from client.site import model_and_rows
from shared import keys
from shared.models.release import ReleaseFamily, add_release_noise
from shared.release_request import ReleaseRequest

log = logging.getLogger("fedsynth.client")


def exact_statistics(
    site: SiteSettings, request: ReleaseRequest, state: dict[str, torch.Tensor]
) -> np.ndarray:
    """Steps 1–2: the site's exact statistics of ``request.stage`` (never sent)."""
    with model_and_rows(
        site, fingerprint=request.schema_fingerprint, model=request.model, state=state
    ) as (family, rows):
        if not isinstance(family, ReleaseFamily):
            raise SiteConfigError(
                f"generator {family.name!r} is trained with DP-SGD, not fitted from releases; "
                "the server's request does not match its model settings"
            )
        sensitivity = family.release_sensitivity(request.stage)
        stats = family.statistics(np.asarray(rows), request.stage)
    if stats.shape != (request.length,) or not math.isclose(
        sensitivity, request.sensitivity, rel_tol=1e-9
    ):
        raise SiteConfigError(
            f"stage {request.stage}: this site computes {stats.shape[0]} statistics with L2 "
            f"sensitivity {sensitivity:.6g}, but the server announced {request.length} and "
            f"{request.sensitivity:.6g}; install the consortium's current schema and fedsynth "
            "version at this site"
        )
    return stats


def release_statistics(
    site: SiteSettings, request: ReleaseRequest, stats: np.ndarray, *, run: str
) -> ReleaseResult:
    """Step 3: budget check, Gaussian noise, durable ledger record (in that order)."""
    result = charge_and_release(
        site,
        noise_multiplier=request.noise_multiplier,
        sensitivity=request.sensitivity,
        accountant=request.accountant,
        ledger_round=request.ledger_round,
        run=run,
        noisy=lambda rng: add_release_noise(
            stats,
            noise_multiplier=request.noise_multiplier,
            sensitivity=request.sensitivity,
            rng=rng,
        ),
    )
    if result.sent:
        log.info(
            "site %s: released stage %d's %d noisy statistics (σ_s=%.4g), cumulative ε=%.4f",
            site.site_name,
            request.stage,
            request.length,
            request.noise_multiplier,
            result.epsilon,
        )
    return result


def reply_content(
    site: SiteSettings | None, request: ReleaseRequest | None, result: ReleaseResult
) -> RecordDict:
    """The reply: only the fields in :data:`shared.keys.RELEASE_REPLY_FIELDS`."""
    return release_reply(
        site,
        result,
        noise_multiplier=request.noise_multiplier if request else 0.0,
        sensitivity=request.sensitivity if request else 0.0,
        accountant=request.accountant if request else "",
        schema_fingerprint=request.schema_fingerprint if request else "",
        record=(keys.RELEASE_ARRAYS, keys.RELEASE_VALUES),
    )


def handle_release(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Answer one release stage (errors become a decline with a safe reason)."""

    def run_stage(
        site: SiteSettings, request: ReleaseRequest, content: RecordDict, run: str
    ) -> ReleaseResult:
        arrays = content.get(keys.GLOBAL_ARRAYS)
        if arrays is None or not hasattr(arrays, "to_torch_state_dict"):
            raise SiteConfigError("the server's release request holds no model")
        state = arrays.to_torch_state_dict()
        return release_statistics(site, request, exact_statistics(site, request, state), run=run)

    return answer_release(
        msg,
        context,
        public_reason,
        stage="release stage",
        parse=lambda content: ReleaseRequest.from_config(dict(content[keys.RELEASE_CONFIG])),
        run_stage=run_stage,
        reply=reply_content,
    )
