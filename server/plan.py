"""Before the run's first charge: ask every site whether it could finish the whole run.

Each stage's own check refuses a round a site cannot afford, but a run whose later
rounds too few sites can afford would charge everyone for the early rounds and then
stop, with no model released. :func:`check_plan` sends every site the mechanisms the
run has left (:class:`shared.run_plan.PlanRequest`, public); each answers from its
ledger alone, charging nothing. Fewer than ``min_sites`` sites able to finish stops
the run here (under secure aggregation: fewer than its threshold over the connected sites).
A site that can take only part of it is named in the log: it trains until its budget
runs out and then declines, and the run goes on without it.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from flwr.app import ConfigRecord, ConfigRecordValues, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.errors import ProtocolError, RoundFailedError
from server.identity import node_label, registered_name
from shared import keys
from shared.config import RunSettings
from shared.distdp.accounting import accounting_multiplier
from shared.distdp.step import parameter_count
from shared.models import GeneratorFamily
from shared.run_plan import PlanRequest, train_config_digest
from shared.secagg import SecAggAbortedError
from shared.secagg.protocol import required_threshold

log = logging.getLogger("fedsynth.server")


def training_noise(settings: RunSettings, family: GeneratorFamily) -> tuple[float, float]:
    """(σ sent to the sites, σ their ledgers record per DP-SGD step).

    The two differ only for noise placement ``distributed``, whose ledger records
    σ_acc = σC/Δ of the rounded, summed shares (:mod:`shared.distdp.accounting`).
    """
    if settings.noise_placement != "distributed":
        sigma = settings.noise_multiplier()
        return sigma, sigma
    plan = settings.distributed_plan()
    dim = parameter_count(family.private_module())
    sigma = plan.sigma(dim)
    recorded = accounting_multiplier(
        sigma=sigma,
        clip_norm=settings.max_grad_norm,
        grid=plan.grid,
        dim=dim,
        sites=plan.noise_sites,
    )
    return sigma, recorded


def dp_sgd_plan(
    settings: RunSettings,
    family: GeneratorFamily,
    *,
    start: int,
    encoder_due: bool,
    effect_due: bool,
) -> PlanRequest:
    """What a DP-SGD run has left after round ``start``: encoder, rounds, effect release."""
    fingerprint = family.schema.fingerprint()
    labels: list[str] = []
    mechanisms: list[tuple[float, float, int]] = []
    if encoder_due:
        labels.append("encoder")
        mechanisms.append((settings.encoder_noise_multiplier(), 1.0, 1))
    sent, recorded = training_noise(settings, family)
    replay = ""
    if start < settings.rounds:
        labels.append("training")
        mechanisms.append(
            (recorded, settings.sample_rate, (settings.rounds - start) * settings.local_steps)
        )
        # Only a whole plain round is re-sent free (never under secure aggregation), and
        # only with the same weights: a refitted encoder changes them.
        if not settings.secure_aggregation and not encoder_due:
            first = settings.train_settings(
                start + 1, noise_multiplier=sent, schema_fingerprint=fingerprint
            )
            replay = train_config_digest(first)
    if effect_due:
        labels.append("effect")
        mechanisms.append((settings.effect_noise_multiplier(), 1.0, 1))
    return _request(settings, fingerprint, labels, mechanisms, replay)


def release_plan(settings: RunSettings, fingerprint: str, *, done: int) -> PlanRequest:
    """What a release family's run has left once its first ``done`` stages are saved."""
    mechanisms = settings.mechanisms()  # a release family's: one (σ_s, 1, 1) per stage
    labels = [f"release stage {s}" for s in range(done, len(mechanisms))]
    return _request(settings, fingerprint, labels, mechanisms[done:], "")


def _request(
    settings: RunSettings,
    fingerprint: str,
    labels: list[str],
    mechanisms: list[tuple[float, float, int]],
    replay: str,
) -> PlanRequest:
    return PlanRequest(
        labels=tuple(labels),
        noise_multipliers=tuple(m[0] for m in mechanisms),
        sample_rates=tuple(m[1] for m in mechanisms),
        steps=tuple(m[2] for m in mechanisms),
        schema_fingerprint=fingerprint,
        accountant=settings.accountant,
        replay_config=replay,
        round_steps=settings.local_steps if "training" in labels else 0,
    )


def parse_plan_reply(msg: Message) -> dict[str, Any]:
    """A site's answer: its name, whether it can finish the plan, why not, its ε now and after.

    Raises
    ------
    ProtocolError
        The reply holds fields outside :data:`shared.keys.PLAN_REPLY_FIELDS`.
    """
    node = msg.metadata.src_node_id
    fields = keys.PLAN_REPLY_FIELDS
    if set(msg.content.keys()) != set(fields):
        raise ProtocolError(f"node {node} answered the run's plan with other records")
    metrics_record, info_record = msg.content[keys.PRIVACY_METRICS], msg.content[keys.SITE_INFO]
    if not isinstance(metrics_record, MetricRecord) or not isinstance(info_record, ConfigRecord):
        raise ProtocolError(f"node {node} answered the run's plan with records of other types")
    metrics, info = dict(metrics_record), dict(info_record)
    if set(metrics) - set(fields[keys.PRIVACY_METRICS]) or set(info) - set(fields[keys.SITE_INFO]):
        raise ProtocolError(f"node {node} answered the run's plan with unexpected fields")
    return {
        "site": registered_name(node, str(info.get(keys.SITE_NAME, f"node-{node}"))),
        "ready": info.get(keys.STATUS) == keys.STATUS_AFFORDABLE,
        "reason": str(info.get(keys.REASON, "")),
        "epsilon": float(cast("float", metrics.get(keys.EPSILON, 0.0))),
        "projected_epsilon": float(cast("float", metrics.get(keys.PROJECTED_EPSILON, 0.0))),
    }


def sites_needed(settings: RunSettings, connected: int) -> tuple[int, str]:
    """How many sites every stage needs, and why: ``min_sites``, or secure aggregation's
    threshold over the ``connected`` sites (each round's key set-up counts them all)."""
    needed, why = settings.min_sites, f"--min-sites {settings.min_sites}"
    if settings.secure_aggregation:
        try:
            t = required_threshold(connected, settings.secagg_threshold)
        except SecAggAbortedError:  # too few connected: every secure round refuses too
            t = max(settings.secagg_threshold, 2)
        if t > needed:
            needed, why = t, f"secure aggregation's threshold of {t} for {connected} sites"
    return needed, why


def check_plan(grid: Grid, settings: RunSettings, plan: PlanRequest) -> list[dict[str, Any]]:
    """Ask every connected site about ``plan``; refuse a run too few of them could finish.

    Returns
    -------
    list of dict
        Each answering site's facts (:func:`parse_plan_reply`), in site order.

    Raises
    ------
    RoundFailedError
        Fewer sites could afford the whole plan than every stage needs
        (:func:`sites_needed`): nothing was charged.
    """
    if not any(plan.steps):
        return []
    n_all = len(list(grid.get_node_ids()))
    node_ids, _ = sample_nodes(grid, settings.min_sites, max(n_all, settings.min_sites))
    config = ConfigRecord(cast("dict[str, ConfigRecordValues]", plan.to_config()))
    messages = [
        Message(
            content=RecordDict({keys.PLAN_CONFIG: config}),
            dst_node_id=nid,
            message_type=f"train.{keys.PLAN_CHECK}",
        )
        for nid in node_ids
    ]
    answers: list[dict[str, Any]] = []
    for rep in grid.send_and_receive(messages, timeout=settings.round_timeout):
        if rep.has_error():
            who = node_label(rep.metadata.src_node_id)
            log.warning("run plan: %s did not answer: %s", who, rep.error.reason)
            continue
        try:
            answers.append(parse_plan_reply(rep))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            log.warning("run plan: reply discarded: %s", exc)
    answers.sort(key=lambda a: str(a["site"]))
    ready = [a["site"] for a in answers if a["ready"]]
    for a in answers:
        if not a["ready"]:
            log.warning("run plan: site %s cannot finish this run: %s", a["site"], a["reason"])
    summary = f"{len(ready)} of {len(node_ids)} site(s) can finish it"
    log.info("run plan (%s): %s", plan.describe(), summary)
    needed, why = sites_needed(settings, len(node_ids))
    if len(ready) < needed:
        declined = "; ".join(f"{a['site']}: {a['reason']}" for a in answers if not a["ready"])
        raise RoundFailedError(
            f"only {len(ready)} site(s) ({', '.join(ready) or 'none'}) can afford the whole "
            f"run, fewer than the {needed} every stage needs ({why}); nothing was charged and "
            f"nothing was sent. Declined: {declined or 'no answer'}. Plan fewer rounds or a "
            "smaller ε (--rounds, --epsilon); raise a site's total budget only if its data "
            "steward agrees (--budget-epsilon at the site, --site-budget in a simulation); "
            "lower --min-sites; or remove a spent site (`fedsynth server sites remove NAME --state-dir DIR`)."
        )
    return answers
