"""Exceptions raised at a site. Each message says what happened and how to fix it."""

from __future__ import annotations

from shared.errors import FedsynthError


class SiteError(FedsynthError):
    """Base class of site-side errors."""


class SiteConfigError(SiteError):
    """The site's node config or client options are missing or invalid."""


class TrainingError(SiteError):
    """Local DP training could not run; nothing was sent and nothing was charged."""


class LedgerError(SiteError):
    """The privacy ledger is missing, corrupt, rolled back or locked. Training stops (fail closed)."""


class LedgerSiteMismatchError(LedgerError):
    """The ledger found at the state folder was written by a site of another name."""


class BudgetExhaustedError(SiteError):
    """The planned steps would take the site's cumulative ε past its total budget."""
