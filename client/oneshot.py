"""One Gaussian release from a site, charged to its ledger before anything is sent.

The DP encoder stage (:mod:`client.encoder`) and the staged generator's effect
calibration (:mod:`client.effect`) each release one vector of statistics once per
run. Both follow the same order, each step failing closed:

1. under the ledger lock, check that one Gaussian mechanism at σ (recorded as
   ``(σ, q = 1, 1 step)``, with the release's L2 sensitivity in place of the clip
   norm) fits the site's remaining budget;
2. add the noise and record the release durably;
3. only then hand back the noisy values for the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client import secagg
from client.errors import BudgetExhaustedError
from client.ledger import PrivacyLedger, ledger_standing
from client.precheck import check_mechanism
from client.settings import SiteSettings
from shared import keys
from shared.errors import FedsynthError
from shared.secagg import site_mask

log = logging.getLogger("fedsynth.client")
Request = TypeVar("Request")


@dataclass(frozen=True)
class ReleaseResult:
    """Outcome of a one-shot release at one site (``noisy`` is set only when sent)."""

    sent: bool
    reason: str
    epsilon: float
    total_steps: int
    noisy: np.ndarray | None = None


def charge_and_release(
    site: SiteSettings,
    *,
    noise_multiplier: float,
    sensitivity: float,
    accountant: str,
    ledger_round: int,
    run: str,
    noisy: Callable[[np.random.Generator], np.ndarray],
) -> ReleaseResult:
    """Budget check, then ``noisy(rng)`` (the values plus noise), then the ledger record.

    Parameters
    ----------
    noise_multiplier : float
        σ, the noise std in units of ``sensitivity``.
    sensitivity : float
        The release's L2 sensitivity under add/remove of one row (recorded as the clip norm).
    ledger_round : int
        The round number the release is recorded under; it also seeds a simulated
        site's noise.
    noisy : callable
        Adds the Gaussian noise to the exact values with the generator it is given.
    """
    from client.site import noise_seed

    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=accountant)
    with ledger.locked() as led:
        try:
            check_mechanism(led, site, noise_multiplier=noise_multiplier, sample_rate=1.0, steps=1)
        except BudgetExhaustedError as exc:
            log.warning("%s", exc)
            return ReleaseResult(
                False, str(exc), led.epsilon(delta=site.budget_delta), led.total_steps
            )
        # Seeded like DP-SGD's noise without secure_mode: secret OS randomness at a real
        # site. secure_mode (a CSPRNG, Opacus's torchcsprng) is not applied to this release.
        values = noisy(np.random.default_rng(noise_seed(site, ledger_round)))
        led.record(
            run=run,
            server_round=ledger_round,
            noise_multiplier=noise_multiplier,
            sample_rate=1.0,
            steps=1,
            max_grad_norm=sensitivity,
        )
        epsilon, total = led.epsilon(delta=site.budget_delta), led.total_steps
    return ReleaseResult(True, "", epsilon, total, values)


def release_reply(
    site: SiteSettings | None,
    result: ReleaseResult,
    *,
    noise_multiplier: float,
    sensitivity: float,
    accountant: str,
    schema_fingerprint: str,
    record: tuple[str, str],
) -> RecordDict:
    """The reply: public accounting, site facts and (when sent) the noisy values.

    ``record`` names the ArrayRecord and the array inside it (:mod:`shared.keys`).
    """
    metrics = MetricRecord(
        {
            keys.EPSILON: float(result.epsilon),
            keys.DELTA: float(site.budget_delta if site else 0.0),
            keys.NOISE_MULTIPLIER: float(noise_multiplier),
            keys.SAMPLE_RATE: 1.0,
            keys.MAX_GRAD_NORM: float(sensitivity if result.sent else 0.0),
            keys.STEPS: 1 if result.sent else 0,
            keys.TOTAL_STEPS: int(result.total_steps),
            keys.UPDATE_NORM_CLIPPED: 0.0,
        }
    )
    info = ConfigRecord(
        {
            keys.SITE_NAME: site.site_name if site else "unknown",
            keys.STATUS: keys.STATUS_TRAINED if result.sent else keys.STATUS_DECLINED,
            keys.REASON: result.reason,
            keys.ACCOUNTANT: accountant,
            # Release noise comes from numpy's generator (secretly seeded), never from
            # Opacus's CSPRNG: the site's --secure-mode does not cover it.
            keys.SECURE_MODE: False,
            keys.NOISE_SEED: "secret"
            if site is None or site.simulation_seed is None
            else "simulation",
            keys.SCHEMA_FINGERPRINT: schema_fingerprint,
        }
    )
    content = RecordDict({keys.PRIVACY_METRICS: metrics, keys.SITE_INFO: info})
    if result.sent and result.noisy is not None:
        content[record[0]] = ArrayRecord({record[1]: Array(np.asarray(result.noisy))})
    return content


def _declined(site: SiteSettings | None, reason: str) -> ReleaseResult:
    """A declined release, with the site's cumulative ε and steps from its ledger."""
    if site is None:
        return ReleaseResult(False, reason, 0.0, 0)
    epsilon, total = ledger_standing(site.ledger_path, site=site.site_name, delta=site.budget_delta)
    return ReleaseResult(False, reason, epsilon, total)


def answer_release(
    msg: Message,
    context: Context,
    public_reason: Callable[[BaseException], str],
    *,
    stage: str,
    parse: Callable[[RecordDict], Request],
    run_stage: Callable[[SiteSettings, Request, RecordDict, str], ReleaseResult],
    reply: Callable[[SiteSettings | None, Request | None, ReleaseResult], RecordDict],
) -> Message:
    """Answer a one-shot release message; any error becomes a decline with a safe reason.

    ``parse`` reads the request from the message, ``run_stage(site, request, content,
    run)`` computes and releases, and ``reply`` builds the reply's records.
    """
    site: SiteSettings | None = None
    request: Request | None = None
    try:
        site = SiteSettings.from_context(context.node_config, context.run_config)
        request = parse(msg.content)
        result = run_stage(site, request, msg.content, str(context.run_id))
    except FedsynthError as exc:
        log.error("%s declined: %s", stage, exc)
        result = _declined(site, public_reason(exc))
    except Exception as exc:  # a bug must not leak values in a traceback
        log.exception("%s failed", stage)
        result = _declined(site, public_reason(exc))
    return Message(content=reply(site, request, result), reply_to=msg)


def answer_secure_release(
    msg: Message,
    context: Context,
    public_reason: Callable[[BaseException], str],
    *,
    stage: str,
    parse: Callable[[RecordDict], Request],
    noise_sites: Callable[[Request], int],
    grid_bits: Callable[[Request], int],
    run_stage: Callable[[SiteSettings, Request, RecordDict, str], ReleaseResult],
    reply: Callable[[SiteSettings | None, Request | None, ReleaseResult], RecordDict],
) -> Message:
    """Stage 3 of a secure one-shot release: ``run_stage``'s ring share, masked.

    ``run_stage`` returns the unmasked ring share (:func:`shared.distdp.release.release_share`)
    as its values, after charging the ledger. Nothing is computed or charged unless
    the site knows its place in the secure round and, for K = ``noise_sites(request)``
    above 1, at least K sites' keys were relayed (else the sum the server can unmask
    could carry less than the charged noise); the site then refuses at the protocol level.
    """
    from shared.distdp.release import release_codec  # imports torch: only when sharing

    try:
        k = noise_sites(parse(msg.content))
        sa_state, me, peers = secagg.participation(msg, context, noise_sites=k)
    except (FedsynthError, KeyError, ValueError, TypeError) as exc:
        return secagg.refuse(msg, exc)

    def masked_stage(
        site: SiteSettings, request: Request, content: RecordDict, run: str
    ) -> ReleaseResult:
        result = run_stage(site, request, content, run)
        if not result.sent or result.noisy is None:
            return result
        ring = release_codec(grid_bits(request)).ring
        context_bytes = cast(bytes, sa_state[keys.SA_CONTEXT])
        masked = site_mask(me, result.noisy, peers, codec=ring, context=context_bytes)
        return replace(result, noisy=ring.to_wire(masked))

    return answer_release(
        msg, context, public_reason, stage=stage, parse=parse, run_stage=masked_stage, reply=reply
    )
