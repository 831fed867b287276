"""Exceptions raised by :mod:`shared.evaluation`.

Every message names the table, column or file at fault and says how to fix it.
"""

from __future__ import annotations

from shared.errors import FedsynthError


class EvaluationError(FedsynthError):
    """The evaluation cannot run on the inputs given (wrong role, empty table, bad report)."""
