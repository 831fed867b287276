"""Exceptions raised by the deployment kit."""

from __future__ import annotations

from shared.errors import FedsynthError


class CertificateError(FedsynthError):
    """A certificate or key could not be created or read."""
