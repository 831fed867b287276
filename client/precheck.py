"""A site's budget check when a secure key set-up opens a stage, before any site computes.

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

import hashlib
import json

from flwr.app import ConfigRecord, RecordDict

from client.errors import SiteConfigError
from client.ledger import PrivacyLedger
from client.settings import SiteSettings
from shared import keys
from shared.config import DistributedStepSettings, TrainSettings
from shared.dp_quantile import HistogramRequest
from shared.release_request import ReleaseRequest

#: The replay record beside the ledger (:mod:`client.replay`).
REPLAY_RECORD = "last_update.json"


def config_digest(train: TrainSettings) -> str:
    """SHA-256 of a round's config alone (no weights): what a set-up message can name."""
    return hashlib.sha256(json.dumps(train.to_config(), sort_keys=True).encode()).hexdigest()


def _answered(site: SiteSettings, config: str) -> bool:
    """Whether the site's last sent update answered a round with this config."""
    try:
        doc = json.loads((site.state_dir / REPLAY_RECORD).read_text(encoding="utf-8"))
        return bool(doc.get("config") == config)
    except (OSError, ValueError, AttributeError):
        return False  # no record (or a damaged one): the round would be trained and charged


def check_round_budget(site: SiteSettings, train: TrainSettings) -> None:
    """Refuse a round this site could not afford; nothing is read but the ledger.

    A round the site already answered (a restarted coordinator asking again) is
    re-sent at no charge, so it passes whatever the budget.

    Raises
    ------
    BudgetExhaustedError
        The round's steps would take the site past its total ε.
    LedgerError
        The ledger is damaged (fail closed).
    """
    if _answered(site, config_digest(train)):
        return
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
    """Refuse a key set-up whose announced stage this site could not afford.

    ``content`` is the set-up message's: its :data:`shared.keys.SA_STAGE` names the
    stage-3 message type, and that stage's config record travels beside it.

    Raises
    ------
    BudgetExhaustedError
        The stage's mechanism would take the site past its total ε.
    LedgerError
        The ledger is damaged (fail closed).
    SiteConfigError
        The server announced a stage this version does not know.
    """
    stage = _record(content, keys.SECAGG).get(keys.SA_STAGE)
    if stage is None:
        return  # nothing announced: the stage's own check decides
    if stage == keys.SECAGG_TRAIN:
        check_round_budget(site, TrainSettings.from_config(_record(content, keys.TRAIN_CONFIG)))
    elif stage == keys.DISTDP_STEP:
        from client.distributed import check_step_budget  # torch: the model's size

        step = DistributedStepSettings.from_config(_record(content, keys.TRAIN_CONFIG))
        check_step_budget(site, step)
    elif stage == keys.RELEASE_SHARE:
        release = ReleaseRequest.from_config(_record(content, keys.RELEASE_CONFIG))
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
