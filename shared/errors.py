"""Exceptions raised by :mod:`shared`.

Every message says what went wrong, where (file, column) and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence


class FedsynthError(Exception):
    """Base class of every error fedsynth raises on purpose."""


class SchemaError(FedsynthError):
    """The schema document is malformed or contradicts itself.

    Parameters
    ----------
    source : str
        File (or description) the schema came from.
    problems : Sequence[str]
        Every problem found; all are reported at once.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"schema {source} is invalid ({len(self.problems)} problem(s)):\n{lines}\n"
            "Fix the schema JSON (the consortium's agreed document) and try again."
        )


class DataValidationError(FedsynthError):
    """A table does not match the public schema.

    Nothing was trained and no privacy budget was charged when this is raised.

    Parameters
    ----------
    source : str
        File the table was read from.
    problems : Sequence[str]
        One line per problem, each naming the column and the fix.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"table {source} does not match the schema ({len(self.problems)} problem(s)):\n"
            f"{lines}\nNothing was computed from it (a site sends nothing and is not charged)."
        )


class ConfigError(FedsynthError):
    """A configuration value is missing, of the wrong type or out of range."""


class ModelError(FedsynthError):
    """A model file, manifest or weight set is missing, corrupt or incompatible."""


class AccountingError(FedsynthError):
    """Privacy accounting was asked something it cannot answer safely."""


def format_problems(problems: Sequence[str]) -> str:
    """Join problems as an indented bullet list (for messages and logs)."""
    return "\n".join(f"  - {p}" for p in problems)


class AuditError(FedsynthError):
    """An empirical privacy audit was given counts or settings it cannot use."""
