"""Exceptions of the secure aggregation protocol. Messages say what happened and what to do."""

from __future__ import annotations

from shared.errors import FedsynthError


class SecAggError(FedsynthError):
    """Base class of secure aggregation errors."""


class SecAggAbortedError(SecAggError):
    """Fewer than the threshold of sites remain: the round is aborted and nothing is revealed."""


class SetupRefusedError(SecAggAbortedError):
    """Too few sites accepted a round's key set-up: aborted before any site computed its input."""


class QuantisationOverflowError(SecAggError):
    """The modular sum of encoded updates could wrap around; the decoded sum would be wrong."""


class SecAggProtocolError(SecAggError):
    """A message of the protocol is malformed, inconsistent or fails authentication."""
