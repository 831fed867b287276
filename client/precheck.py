"""A site's budget checks before it is charged: the run's plan, and each secure stage.

Before its first charge the coordinator sends the run's whole plan
(:class:`shared.run_plan.PlanRequest`); :func:`check_plan` says whether this site
could afford all of it, so a run that too few sites could finish never starts.

Under secure aggregation the server sends the stage-3 message's type and config with
the key set-up (:data:`shared.keys.SA_STAGE`): a training round, one distributed DP-SGD
step, a release stage or the encoder's histograms. A site that could not afford that
mechanism refuses the set-up, so a stage that cannot reach its quorum stops before it
costs the other sites anything: without this, they would compute and be charged, and
the stage would then abort. The check in the stage itself (e.g.
:func:`client.site.run_site_round`) stays the one that decides; this one only lets a
doomed stage fail early. Light: no torch, except for a distributed step, whose
accounting needs the model's size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.errors import BudgetExhaustedError, SchemaMismatchError, SiteConfigError
from client.ledger import PrivacyLedger, ledger_standing
from client.settings import SiteSettings
from shared import keys
from shared.accounting import Mechanism, epsilon_of
from shared.config import DistributedStepSettings, TrainSettings
from shared.dp_quantile import HistogramRequest
from shared.errors import FedsynthError
from shared.release_request import ReleaseRequest
from shared.run_plan import PlanRequest
from shared.schema import Schema

log = logging.getLogger("fedsynth.client")

#: The replay record beside the ledger (:mod:`client.replay`).
REPLAY_RECORD = "last_update.json"


def site_schema(site: SiteSettings, fingerprint: str) -> Schema:
    """The site's schema file, refused unless it is the consortium's (same fingerprint)."""
    schema = Schema.load(site.schema_path)
    if schema.fingerprint() != fingerprint:
        mine = schema.fingerprint()
        raise SchemaMismatchError(
            f"the site's schema {site.schema_path} (fingerprint {mine[:12]}) differs from the "
            f"server's ({fingerprint[:12]}); install the consortium's current schema at this site"
        )
    return schema


def _answered(site: SiteSettings, config: str) -> bool:
    """Whether the site's last sent update answered a round with this config."""
    try:
        doc = json.loads((site.state_dir / REPLAY_RECORD).read_text(encoding="utf-8"))
        return bool(doc.get("config") == config)
    except (OSError, ValueError, AttributeError):
        return False  # no record (or a damaged one): the round would be trained and charged


def check_round_budget(site: SiteSettings, train: TrainSettings) -> None:
    """Refuse a secure round this site could not afford; nothing is read but the ledger.

    Under secure aggregation a round is never re-sent for free (it is trained and
    charged again, :func:`client.site.run_site_round`), so a round the site already
    answered is checked like any other.

    Raises
    ------
    BudgetExhaustedError
        The round's steps would take the site past its total ε.
    LedgerError
        The ledger is damaged (fail closed).
    """
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=train.accountant)
    check_affordable(ledger, site, train)


def check_affordable(ledger: PrivacyLedger, site: SiteSettings, train: TrainSettings) -> None:
    """Raise :class:`BudgetExhaustedError` if ``train``'s steps would exceed the site's ε."""
    check_mechanism(
        ledger,
        site,
        noise_multiplier=train.noise_multiplier,
        sample_rate=train.sample_rate,
        steps=train.local_steps,
    )


def check_mechanism(
    ledger: PrivacyLedger,
    site: SiteSettings,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
) -> None:
    """Raise :class:`BudgetExhaustedError` if the steps would exceed the site's total ε.

    Parameters
    ----------
    noise_multiplier : float
        σ, noise std in units of the clip norm (or of the release's L2 sensitivity).
    sample_rate : float
        q, the Poisson sampling rate (1 for a release over all rows).
    steps : int
        Compositions of the subsampled Gaussian mechanism.
    """
    ledger.check_budget(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        budget_epsilon=site.budget_epsilon,
        delta=site.budget_delta,
    )


def check_one_release(site: SiteSettings, *, noise_multiplier: float, accountant: str) -> None:
    """Refuse one Gaussian release at σ (``q = 1``, one step) that would exceed the site's ε.

    Parameters
    ----------
    noise_multiplier : float
        σ, the release's noise std in units of its L2 sensitivity.
    """
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=accountant)
    check_mechanism(ledger, site, noise_multiplier=noise_multiplier, sample_rate=1.0, steps=1)


def check_announced(site: SiteSettings, content: RecordDict) -> None:
    """Refuse a key set-up whose announced stage this site could not afford or take part in.

    ``content`` is the set-up message's: its :data:`shared.keys.SA_STAGE` names the
    stage-3 message type, and that stage's config record travels beside it.

    Raises
    ------
    BudgetExhaustedError
        The stage's mechanism would take the site past its total ε.
    LedgerError
        The ledger is damaged (fail closed).
    SchemaMismatchError
        The stage is for another schema than the site's (a training round, a release).
    SiteConfigError
        The server announced a stage this version does not know.
    """
    stage = _record(content, keys.SECAGG).get(keys.SA_STAGE)
    if stage is None:
        return  # nothing announced: the stage's own check decides
    if stage == keys.SECAGG_TRAIN:
        train = TrainSettings.from_config(_record(content, keys.TRAIN_CONFIG))
        site_schema(site, train.schema_fingerprint)  # a foreign schema would decline later
        check_round_budget(site, train)
    elif stage == keys.DISTDP_STEP:
        from client.distributed import check_step_budget  # torch: the model's size

        step = DistributedStepSettings.from_config(_record(content, keys.TRAIN_CONFIG))
        check_step_budget(site, step)
    elif stage == keys.RELEASE_SHARE:
        release = ReleaseRequest.from_config(_record(content, keys.RELEASE_CONFIG))
        site_schema(site, release.schema_fingerprint)
        check_one_release(
            site, noise_multiplier=release.noise_multiplier, accountant=release.accountant
        )
    elif stage == keys.ENCODER_SHARE:
        hist = HistogramRequest.from_config(_record(content, keys.ENCODER_CONFIG))
        check_one_release(site, noise_multiplier=hist.noise_multiplier, accountant=hist.accountant)
    else:
        raise SiteConfigError(
            f"the server's key set-up opens a stage {stage!r} this site does not know; "
            "install the consortium's current fedsynth version"
        )


def _record(content: RecordDict, name: str) -> dict[str, object]:
    record = content.get(name)
    if not isinstance(record, ConfigRecord):
        raise SiteConfigError(f"the server's key set-up lacks its {name!r} record")
    return dict(record)


def check_plan(site: SiteSettings, plan: PlanRequest) -> float:
    """Refuse a run whose remaining mechanisms this site could not all afford.

    Nothing is read but the site's schema and ledger, and nothing is charged.

    Returns
    -------
    float
        The site's projected cumulative ε after the whole plan.

    Raises
    ------
    BudgetExhaustedError
        The plan would take the site past its total ε; the message says how many of
        the plan's training rounds it could still afford.
    LedgerError
        The ledger is damaged (fail closed).
    SiteConfigError
        The site's schema is not the consortium's.
    """
    site_schema(site, plan.schema_fingerprint)
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=plan.accountant)
    replayed = bool(plan.replay_config) and _answered(site, plan.replay_config)
    mechanisms = plan.mechanisms(replayed=replayed)

    def projected(plan_part: list[Mechanism]) -> float:
        return epsilon_of(
            [*ledger.history, *plan_part], delta=site.budget_delta, accountant=ledger.accountant
        )

    total = projected(mechanisms)
    if total <= site.budget_epsilon:
        return total
    spent = ledger.epsilon(delta=site.budget_delta)
    raise BudgetExhaustedError(
        f"site {site.site_name!r} cannot finish this run: its remaining plan "
        f"({plan.describe()}) would raise its cumulative ε from {spent:.4f} to {total:.4f}, "
        f"above its total budget ε={site.budget_epsilon:g} (δ={site.budget_delta:g}); "
        f"{_affordable_rounds(plan, mechanisms, projected, site.budget_epsilon)}. Nothing was "
        "charged. Raise the site's budget only if its data steward agrees, or plan fewer "
        "rounds or more noise."
    )


def _affordable_rounds(
    plan: PlanRequest,
    mechanisms: list[Mechanism],
    projected: Callable[[list[Mechanism]], float],
    budget: float,
) -> str:
    """'it could afford r of the R training rounds left' (the stages before training included)."""
    if "training" not in plan.labels or plan.round_steps <= 0:
        return "it cannot afford all of it"
    i = plan.labels.index("training")
    sigma, q, steps = mechanisms[i]
    rounds = steps // plan.round_steps
    lo, hi = 0, rounds  # the largest r whose prefix fits: ε grows with the steps
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if projected([*mechanisms[:i], (sigma, q, mid * plan.round_steps)]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return f"it could afford {lo} of the {rounds} training round(s) left"


def handle_plan(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Answer the run's plan (:data:`shared.keys.PLAN_CHECK`): can this site finish it?"""
    site: SiteSettings | None = None
    status, reason, spent, total = keys.STATUS_DECLINED, "", 0.0, 0.0
    try:
        site = SiteSettings.from_context(context.node_config, context.run_config)
        plan = PlanRequest.from_config(_record(msg.content, keys.PLAN_CONFIG))
        total = check_plan(site, plan)
        status = keys.STATUS_AFFORDABLE
    except BudgetExhaustedError as exc:  # public parameters only: σ, q, steps, ε
        log.warning("%s", exc)
        reason = str(exc)
    except FedsynthError as exc:
        log.error("run plan declined: %s", exc)
        reason = public_reason(exc)
    except Exception as exc:  # a bug must not leak values in a traceback
        log.exception("run plan failed")
        reason = public_reason(exc)
    if site is not None:
        spent, _ = ledger_standing(site.ledger_path, site=site.site_name, delta=site.budget_delta)
    metrics = MetricRecord(
        {
            keys.EPSILON: float(spent),
            keys.DELTA: float(site.budget_delta if site else 0.0),
            keys.PROJECTED_EPSILON: float(total),
        }
    )
    info = ConfigRecord(
        {
            keys.SITE_NAME: site.site_name if site else "unknown",
            keys.STATUS: status,
            keys.REASON: reason,
        }
    )
    content = RecordDict({keys.PRIVACY_METRICS: metrics, keys.SITE_INFO: info})
    return Message(content=content, reply_to=msg)
