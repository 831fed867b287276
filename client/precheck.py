"""A site's budget check ahead of a round, before any site trains (light: no torch).

Under secure aggregation the server announces the round's DP-SGD mechanism in the
key set-up message. A site that could not afford it refuses the set-up, so a round
that cannot reach its quorum stops before it costs the other sites anything: without
this, they would train and be charged, and the round would then abort. The check in
the round itself (:func:`client.site.run_site_round`) stays the one that decides; this
one only lets a doomed round fail early.
"""

from __future__ import annotations

import hashlib
import json

from client.ledger import PrivacyLedger
from client.settings import SiteSettings
from shared.config import TrainSettings

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
    ledger.check_budget(
        noise_multiplier=train.noise_multiplier,
        sample_rate=train.sample_rate,
        steps=train.local_steps,
        budget_epsilon=site.budget_epsilon,
        delta=site.budget_delta,
    )
