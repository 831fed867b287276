"""Exceptions raised at a site. Each message says what happened and how to fix it."""

from __future__ import annotations

from shared.errors import (
    ConfigError,
    DataValidationError,
    FedsynthError,
    ModelError,
    SchemaError,
)


class SiteError(FedsynthError):
    """Base class of site-side errors."""


class SiteConfigError(SiteError):
    """The site's node config or client options are missing or invalid."""


class SchemaMismatchError(SiteConfigError):
    """The site's schema file is not the consortium's (another fingerprint)."""


class TrainingError(SiteError):
    """Local DP training could not run; nothing was sent and nothing was charged."""


class LedgerError(SiteError):
    """The privacy ledger is missing, corrupt, rolled back or locked. Training stops (fail closed)."""


class LedgerSiteMismatchError(LedgerError):
    """The ledger found at the state folder was written by a site of another name."""


class BudgetExhaustedError(SiteError):
    """The planned steps would take the site's cumulative ε past its total budget."""


def public_reason(exc: BaseException) -> str:
    """A decline reason safe to send: the error's kind, never values, paths or counts.

    A budget refusal is sent whole: it names only the public σ, q, steps and ε. Every
    other message (validation problems quote cells; others name the site's files)
    stays in the site's log.
    """
    if isinstance(exc, BudgetExhaustedError):
        return str(exc)
    if isinstance(exc, SchemaMismatchError):  # not its fingerprint: bounds may be private
        return (
            "the site's schema differs from the server's (fingerprints in the site's log); "
            "the site must install the consortium's current schema"
        )
    if isinstance(exc, DataValidationError):
        return "the site's table failed schema validation; details are in the site's log"
    if isinstance(exc, LedgerError):
        return "the site's privacy ledger is missing, corrupt or rolled back; see the site's log"
    if isinstance(exc, SchemaError | SiteConfigError | ConfigError | ModelError | TrainingError):
        return f"{type(exc).__name__} at the site; see the site's log"
    return f"internal error ({type(exc).__name__}) at the site; see the site's log"
