"""Domain constraints declared in the public schema (``fedsynth_schema_version`` 2).

A constraint is a rule every row must satisfy. Four kinds exist::

    {"type": "range", "column": "age", "min": 0, "max": 120}
    {"type": "implies", "if": {"sex": "male"}, "then": {"pregnant": "no"}}
    {"type": "compare", "left": "sbp", "op": ">", "right": "dbp"}
    {"type": "combinations", "columns": ["country", "city"],
     "allowed": [["fr", "paris"], ["uk", "london"]]}

``implies`` and ``combinations`` take categorical columns; a value in ``if`` or
``then`` may be one category or a list of them (any of). ``range`` and
``compare`` take numeric columns. A missing value (in a nullable column)
satisfies every constraint it takes part in: the rule cannot be checked on it.

This module holds the constraint types and checks rows against them;
:mod:`shared.constraint_parse` reads them from the schema document and
:mod:`shared.constraint_plan` decides whether a set of them can be met at all.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Op = Literal["<", "<=", ">", ">="]
OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _present(frame: pd.DataFrame, name: str) -> np.ndarray:
    return np.asarray(frame[name].notna().to_numpy(), dtype=bool)


@dataclass(frozen=True)
class RangeConstraint:
    """``min <= column <= max`` (either side optional) on a numeric column."""

    column: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns the constraint reads."""
        return (self.column,)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (canonical)."""
        out: dict[str, Any] = {"type": "range", "column": self.column}
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        return out

    def describe(self) -> str:
        """Readable form, e.g. ``age >= 0 and age <= 120``."""
        parts = []
        if self.minimum is not None:
            parts.append(f"{self.column} >= {_num(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"{self.column} <= {_num(self.maximum)}")
        return " and ".join(parts)

    def violations(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of a validated table that break the rule."""
        x = frame[self.column].to_numpy(dtype=np.float64)
        bad = np.zeros(len(frame), dtype=bool)
        with np.errstate(invalid="ignore"):
            if self.minimum is not None:
                bad |= x < self.minimum
            if self.maximum is not None:
                bad |= x > self.maximum
        return bad


Clause = tuple[tuple[str, tuple[str, ...]], ...]


def _clause_text(clause: Clause) -> str:
    parts = []
    for col, values in clause:
        if len(values) == 1:
            parts.append(f"{col} == {json.dumps(values[0])}")
        else:
            parts.append(f"{col} in {json.dumps(list(values))}")
    return " and ".join(parts)


@dataclass(frozen=True)
class Implication:
    """``if`` every premise column holds one of its values, each ``then`` column must too."""

    premise: Clause
    conclusion: Clause

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns the constraint reads."""
        return tuple(c for c, _ in self.premise) + tuple(c for c, _ in self.conclusion)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (canonical: values always as lists)."""
        return {
            "type": "implies",
            "if": {c: list(v) for c, v in self.premise},
            "then": {c: list(v) for c, v in self.conclusion},
        }

    def describe(self) -> str:
        """Readable form, e.g. ``sex == "male" -> pregnant == "no"``."""
        return f"{_clause_text(self.premise)} -> {_clause_text(self.conclusion)}"

    def violations(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of a validated table that break the rule."""
        holds = np.ones(len(frame), dtype=bool)
        for col, values in self.premise:
            holds &= frame[col].isin(values).to_numpy()
        broken = np.zeros(len(frame), dtype=bool)
        for col, values in self.conclusion:
            broken |= _present(frame, col) & ~frame[col].isin(values).to_numpy()
        return holds & broken


@dataclass(frozen=True)
class Comparison:
    """``left op right`` between two numeric columns."""

    left: str
    op: Op
    right: str

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns the constraint reads."""
        return (self.left, self.right)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (canonical)."""
        return {"type": "compare", "left": self.left, "op": self.op, "right": self.right}

    def describe(self) -> str:
        """Readable form, e.g. ``sbp > dbp``."""
        return f"{self.left} {self.op} {self.right}"

    def violations(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of a validated table that break the rule."""
        a = frame[self.left].to_numpy(dtype=np.float64)
        b = frame[self.right].to_numpy(dtype=np.float64)
        both = ~np.isnan(a) & ~np.isnan(b)
        ok = np.asarray(OPS[self.op](np.where(both, a, 0.0), np.where(both, b, 0.0)), dtype=bool)
        return np.asarray(both & ~ok, dtype=bool)


@dataclass(frozen=True)
class Combinations:
    """The categorical ``columns`` may only take the listed value tuples together."""

    columns: tuple[str, ...]
    allowed: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (canonical)."""
        return {
            "type": "combinations",
            "columns": list(self.columns),
            "allowed": [list(t) for t in self.allowed],
        }

    def describe(self) -> str:
        """Readable form, e.g. ``(country, city) in 2 allowed combinations``."""
        return f"({', '.join(self.columns)}) in {len(self.allowed)} allowed combination(s)"

    def violations(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of a validated table that break the rule."""
        present = np.ones(len(frame), dtype=bool)
        for col in self.columns:
            present &= _present(frame, col)
        keys = pd.MultiIndex.from_frame(frame[list(self.columns)].astype(object).fillna(""))
        allowed = pd.MultiIndex.from_tuples(list(self.allowed), names=list(self.columns))
        return np.asarray(present & ~np.asarray(keys.isin(allowed), dtype=bool), dtype=bool)


Constraint = RangeConstraint | Implication | Comparison | Combinations
