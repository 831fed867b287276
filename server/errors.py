"""Exceptions raised by the coordinator. Messages say what happened and what to do."""

from __future__ import annotations

from shared.errors import FedsynthError


class ServerError(FedsynthError):
    """Base class of coordinator errors."""


class RoundFailedError(ServerError):
    """Too few sites returned a valid update; nothing was aggregated for the round."""


class ProtocolError(ServerError):
    """A site's reply held fields outside the agreed message format; it was discarded."""


class CheckpointError(ServerError):
    """A checkpoint is corrupt or belongs to a different run configuration."""


class DeploymentError(ServerError):
    """A SuperLink, SuperNode or run could not be started or completed."""


class SiteRegistryError(ServerError):
    """The site registry is damaged, or an add/remove request is invalid."""
