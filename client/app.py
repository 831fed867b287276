"""The Flower ClientApp: one train message in, one reply out.

The reply holds exactly the fields in :data:`shared.keys.SITE_REPLY_FIELDS`:
the clipped update and the site's public accounting figures. Errors are turned
into a *declined* reply whose reason never contains cell values (validation
messages quote rows, so they stay in the site's log).
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import secagg
from client.errors import SiteConfigError, public_reason
from client.identity import registered_name_mod
from client.result import RoundResult
from client.settings import SiteSettings
from shared import keys
from shared.config import TrainSettings
from shared.errors import FedsynthError
from shared.logs import setup_logging

log = logging.getLogger("fedsynth.client")
app = ClientApp(mods=[registered_name_mod])


def build_reply_content(
    site: SiteSettings | None, train: TrainSettings | None, result: RoundResult
) -> RecordDict:
    """Assemble the reply; only the listed keys are ever set."""
    metrics: dict[str, Any] = {
        keys.EPSILON: float(result.epsilon),
        keys.DELTA: float(site.budget_delta if site else 0.0),
        keys.NOISE_MULTIPLIER: float(train.noise_multiplier if train else 0.0),
        keys.SAMPLE_RATE: float(train.sample_rate if train else 0.0),
        keys.MAX_GRAD_NORM: float(train.max_grad_norm if train else 0.0),
        keys.STEPS: int(result.steps),
        keys.TOTAL_STEPS: int(result.total_steps),
        keys.UPDATE_NORM_CLIPPED: 1.0 if result.update_clipped else 0.0,
    }
    if site is not None and site.share_timing and result.trained:
        metrics[keys.TRAIN_SECONDS] = round(float(result.seconds), 1)
    if site is not None and site.share_row_count and result.trained:
        metrics[keys.NUM_ROWS] = int(result.num_rows)
    info = ConfigRecord(
        {
            keys.SITE_NAME: site.site_name if site else "unknown",
            keys.STATUS: keys.STATUS_TRAINED if result.trained else keys.STATUS_DECLINED,
            keys.REASON: result.reason,
            keys.ACCOUNTANT: train.accountant if train else "",
            keys.SECURE_MODE: bool(site.secure_mode) if site else False,
            keys.NOISE_SEED: "secret"
            if site is None or site.simulation_seed is None
            else "simulation",
            keys.SCHEMA_FINGERPRINT: train.schema_fingerprint if train else "",
        }
    )
    content = RecordDict({keys.PRIVACY_METRICS: MetricRecord(metrics), keys.SITE_INFO: info})
    if result.trained and result.update is not None:
        content[keys.UPDATE_ARRAYS] = ArrayRecord(result.update)
    return content


def handle_train(msg: Message, context: Context) -> Message:
    """Validate, train under the ledger, and reply (or decline with a safe reason)."""
    return Message(content=build_reply_content(*train_round(msg, context)), reply_to=msg)


def train_round(
    msg: Message, context: Context, *, secure: bool = False
) -> tuple[SiteSettings | None, TrainSettings | None, RoundResult]:
    """The site's round (errors become a declined result with a safe reason).

    ``secure``: the update goes into a secure sum, so it is never re-sent
    (:func:`client.site.run_site_round`).
    """
    site: SiteSettings | None = None
    train: TrainSettings | None = None
    try:
        site = SiteSettings.from_context(context.node_config, context.run_config)
        train = TrainSettings.from_config(dict(msg.content[keys.TRAIN_CONFIG]))
        arrays = msg.content[keys.GLOBAL_ARRAYS]
        if not isinstance(arrays, ArrayRecord):
            raise SiteConfigError("the server's message holds no global weights")
        # Imported here: torch and Opacus load only for messages that train (and
        # before to_torch_state_dict, which needs torch already imported).
        from client.site import run_site_round

        global_state = arrays.to_torch_state_dict()
        result = run_site_round(
            site, train, global_state, run=str(context.run_id), resend=not secure
        )
    except FedsynthError as exc:
        log.error("round declined: %s", exc)
        result = declined(site, public_reason(exc))
    except Exception as exc:  # a bug must not leak values in a traceback
        log.exception("round failed")
        result = declined(site, public_reason(exc))
    return site, train, result


def declined(site: SiteSettings | None, reason: str) -> RoundResult:
    """A declined round's result, with the site's cumulative ε and steps from its ledger."""
    if site is None:
        return RoundResult(False, reason, 0.0, 0, 0)
    from client.ledger import ledger_standing

    epsilon, total = ledger_standing(site.ledger_path, site=site.site_name, delta=site.budget_delta)
    return RoundResult(False, reason, epsilon, 0, total)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower entry point for train messages."""
    setup_logging()
    return handle_train(msg, context)


@app.train(keys.PLAN_CHECK)
def plan_check(msg: Message, context: Context) -> Message:
    """Before the run's first charge: could this site afford the whole plan? (:mod:`client.precheck`)."""
    setup_logging()
    from client.precheck import handle_plan

    return handle_plan(msg, context, public_reason)


@app.train(keys.SECAGG_SETUP)
def secagg_setup(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 1 (see :mod:`client.secagg`).

    The set-up names the stage it opens; a site that could not afford that stage's
    mechanism refuses here, before any site computes (:mod:`client.precheck`).
    """
    setup_logging()

    def affordable() -> None:
        from client.precheck import check_announced

        site = SiteSettings.from_context(context.node_config, context.run_config)
        check_announced(site, msg.content)

    return secagg.handle_setup(msg, context, affordable)


@app.train(keys.SECAGG_SHARE_KEYS)
def secagg_share_keys(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 2."""
    return secagg.handle_share_keys(msg, context)


@app.train(keys.SECAGG_TRAIN)
def secagg_train(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 3: train as in :func:`train`, send the masked update."""
    setup_logging()
    return secagg.handle_masked_train(
        msg, context, lambda: build_reply_content(*train_round(msg, context, secure=True))
    )


@app.train(keys.SECAGG_UNMASK)
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4."""
    return secagg.handle_unmask(msg, context)


@app.train(keys.DISTDP_STEP)
def distdp_step(msg: Message, context: Context) -> Message:
    """Noise placement ``distributed``: one DP-SGD step's masked noisy share (stage 3)."""
    setup_logging()
    from client.distributed import handle_step  # torch: only for messages that compute

    return handle_step(msg, context, build_reply_content)


@app.train(keys.ENCODER_HISTOGRAM)
def encoder_histogram(msg: Message, context: Context) -> Message:
    """DP encoder stage (before round 1): noisy histograms, charged first (:mod:`client.encoder`)."""
    setup_logging()
    from client.encoder import handle_histogram

    return handle_histogram(msg, context, public_reason)


@app.train(keys.ENCODER_SHARE)
def encoder_share(msg: Message, context: Context) -> Message:
    """DP encoder stage under secure aggregation: the masked share of the histograms."""
    setup_logging()
    from client.encoder import handle_histogram_share

    return handle_histogram_share(msg, context, public_reason)


@app.train(keys.EFFECT_CALIBRATION)
def effect_calibration(msg: Message, context: Context) -> Message:
    """Staged generator, after the last round: noisy AIPW score sums (:mod:`client.effect`)."""
    setup_logging()
    from client.effect import handle_effect

    return handle_effect(msg, context, public_reason)


@app.train(keys.RELEASE_STATISTICS)
def release_statistics(msg: Message, context: Context) -> Message:
    """Release family (e.g. dp-marginal): one stage's noisy statistics (:mod:`client.release_stage`)."""
    setup_logging()
    from client.release_stage import handle_release

    return handle_release(msg, context, public_reason)


@app.train(keys.RELEASE_SHARE)
def release_share(msg: Message, context: Context) -> Message:
    """Release family under secure aggregation: one stage's masked noisy share (stage 3)."""
    setup_logging()
    from client.release_stage import handle_release_share

    return handle_release_share(msg, context, public_reason)
