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

The exact statistics never leave this module. A plain request (``RELEASE_STATISTICS``,
no secure aggregation) is answered with ``statistics + N(0, (σ_s Δ_s)²)``. Under
secure aggregation (``RELEASE_SHARE``, :func:`handle_release_share`) the site
sends its counts plus a discrete Gaussian share of the noise
(:mod:`shared.distdp.release`), masked (:mod:`client.secagg`): with K = 1 the
share holds the full noise, with K > 1 (noise placement ``distributed``) 1/K of its
variance, and then the site first checks that at least K sites take part in the sum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict

from client.errors import SiteConfigError
from client.oneshot import (
    ReleaseResult,
    answer_release,
    answer_secure_release,
    charge_and_release,
    release_reply,
)
from client.settings import SiteSettings
from client.site import model_and_rows
from shared import keys
from shared.distdp.release import release_grid_bits, release_share
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


def _noisy(
    request: ReleaseRequest, stats: np.ndarray, share: bool
) -> Callable[[np.random.Generator], np.ndarray]:
    if not share:
        return lambda rng: add_release_noise(
            stats,
            noise_multiplier=request.noise_multiplier,
            sensitivity=request.sensitivity,
            rng=rng,
        )
    # The share's grid must make the K discrete Gaussians sum to (nearly) one.
    needed = release_grid_bits(
        noise_multiplier=request.noise_multiplier,
        sensitivity=request.sensitivity,
        noise_sites=request.noise_sites,
        length=request.length,
    )
    if request.grid_bits < needed:
        raise SiteConfigError(
            f"stage {request.stage}: the announced grid 2**-{request.grid_bits} is too coarse "
            f"for K = {request.noise_sites} noise shares (this site needs 2**-{needed}); "
            "install the consortium's current fedsynth version"
        )
    return lambda rng: release_share(
        stats,
        noise_multiplier=request.noise_multiplier,
        sensitivity=request.sensitivity,
        noise_sites=request.noise_sites,
        grid_bits=request.grid_bits,
        rng=rng,
    )


def release_statistics(
    site: SiteSettings,
    request: ReleaseRequest,
    stats: np.ndarray,
    *,
    run: str,
    share: bool = False,
) -> ReleaseResult:
    """Step 3: budget check, noise, durable ledger record (in that order).

    ``share``: return the ring share for secure aggregation (discrete Gaussian noise
    of std σ_sΔ_s/√K) instead of the float release (Gaussian noise of std σ_sΔ_s).
    Either way the ledger records one ``(σ_s, q = 1, 1 step)`` at sensitivity Δ_s:
    the guarantee against the server, which sees only the sum of at least K shares.
    """
    if not share and request.noise_sites != 1:
        raise SiteConfigError(
            f"stage {request.stage}: the server asks for a share of 1/{request.noise_sites} of "
            "the noise outside secure aggregation; the site refuses (it would see an "
            "under-noised vector). The coordinator must run with secure aggregation"
        )
    noisy = _noisy(request, stats, share)
    result = charge_and_release(
        site,
        noise_multiplier=request.noise_multiplier,
        sensitivity=request.sensitivity,
        accountant=request.accountant,
        ledger_round=request.ledger_round,
        run=run,
        noisy=noisy,
    )
    if result.sent:
        log.info(
            "site %s: %s stage %d's %d noisy statistics (σ_s=%.4g, K=%d), cumulative ε=%.4f",
            site.site_name,
            "shared (masked, for the secure sum)" if share else "released",
            request.stage,
            request.length,
            request.noise_multiplier,
            request.noise_sites,
            result.epsilon,
        )
    return result


def reply_content(
    site: SiteSettings | None,
    request: ReleaseRequest | None,
    result: ReleaseResult,
    *,
    masked: bool = False,
) -> RecordDict:
    """The reply: only the fields in :data:`shared.keys.RELEASE_REPLY_FIELDS`.

    ``masked``: the values are the masked ring share (:data:`shared.keys.RELEASE_SHARE_REPLY_FIELDS`).
    """
    return release_reply(
        site,
        result,
        noise_multiplier=request.noise_multiplier if request else 0.0,
        sensitivity=request.sensitivity if request else 0.0,
        accountant=request.accountant if request else "",
        schema_fingerprint=request.schema_fingerprint if request else "",
        record=(keys.MASKED_UPDATE, keys.MASKED_VECTOR)
        if masked
        else (keys.RELEASE_ARRAYS, keys.RELEASE_VALUES),
    )


def _state_of(content: RecordDict) -> dict[str, torch.Tensor]:
    arrays = content.get(keys.GLOBAL_ARRAYS)
    if arrays is None or not hasattr(arrays, "to_torch_state_dict"):
        raise SiteConfigError("the server's release request holds no model")
    state: dict[str, torch.Tensor] = arrays.to_torch_state_dict()
    return state


def _parse(content: RecordDict) -> ReleaseRequest:
    return ReleaseRequest.from_config(dict(content[keys.RELEASE_CONFIG]))


def _stage_runner(
    *, share: bool
) -> Callable[[SiteSettings, ReleaseRequest, RecordDict, str], ReleaseResult]:
    def run_stage(
        site: SiteSettings, request: ReleaseRequest, content: RecordDict, run: str
    ) -> ReleaseResult:
        stats = exact_statistics(site, request, _state_of(content))
        return release_statistics(site, request, stats, run=run, share=share)

    return run_stage


def handle_release(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Answer one release stage (errors become a decline with a safe reason)."""
    return answer_release(
        msg,
        context,
        public_reason,
        stage="release stage",
        parse=_parse,
        run_stage=_stage_runner(share=False),
        reply=reply_content,
    )


def handle_release_share(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Stage 3 of a secure release stage: the masked share of one stage's noisy counts."""
    return answer_secure_release(
        msg,
        context,
        public_reason,
        stage="secure release stage",
        parse=_parse,
        noise_sites=lambda request: request.noise_sites,
        grid_bits=lambda request: request.grid_bits,
        run_stage=_stage_runner(share=True),
        reply=lambda site, request, result: reply_content(site, request, result, masked=True),
    )
