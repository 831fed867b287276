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

This module parses constraints and checks rows against them; whether a set of
constraints can be met at all is decided in :mod:`shared.constraint_plan`.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from shared.schema import Column

Op = Literal["<", "<=", ">", ">="]
OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_KINDS = ("range", "implies", "compare", "combinations")
_KEYS = {
    "range": {"type", "column", "min", "max"},
    "implies": {"type", "if", "then"},
    "compare": {"type", "left", "op", "right"},
    "combinations": {"type", "columns", "allowed"},
}
_MAX_ALLOWED = 10_000


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


def parse_constraints(
    raw: Any, columns: dict[str, Column], problems: list[str]
) -> tuple[Constraint, ...]:
    """Parse the schema's ``constraints`` list, appending every problem found.

    Checks what one constraint alone can get wrong: unknown fields or columns,
    a column of the wrong type, categories not in the column's list, malformed
    values. Whether the constraints together can be met is checked by
    :func:`shared.constraint_plan.check_feasible`.
    """
    if not isinstance(raw, list):
        problems.append("'constraints' must be a list of constraint objects")
        return ()
    out: list[Constraint] = []
    for i, item in enumerate(raw):
        where = f"constraints[{i}]"
        if not isinstance(item, dict) or item.get("type") not in _KINDS:
            got = item.get("type") if isinstance(item, dict) else type(item).__name__
            problems.append(f"{where}: 'type' must be one of {list(_KINDS)}, got {got!r}")
            continue
        kind = str(item["type"])
        unknown = set(item) - _KEYS[kind]
        if unknown:
            problems.append(f"{where} ({kind}): unknown field(s) {sorted(unknown)}; remove them")
            continue
        before = len(problems)
        parsed = _PARSERS[kind](item, columns, where, problems)
        if parsed is not None and len(problems) == before:
            out.append(parsed)
    if len(set(out)) != len(out):
        problems.append("'constraints' lists the same constraint twice; keep one entry")
    return tuple(out)


def _column(
    name: Any, columns: dict[str, Column], numeric: bool, where: str, problems: list[str]
) -> Column | None:
    if not isinstance(name, str) or name not in columns:
        problems.append(
            f"{where}: {name!r} is not a column of the schema; use one of {sorted(columns)[:8]}"
        )
        return None
    col = columns[name]
    if col.is_numeric != numeric:
        need = "numeric (integer or continuous)" if numeric else "categorical"
        problems.append(
            f"{where}: column {name!r} is {col.kind}, but this constraint needs a {need} column"
        )
        return None
    return col


def _parse_range(
    item: dict[str, Any], columns: dict[str, Column], where: str, problems: list[str]
) -> Constraint | None:
    col = _column(item.get("column"), columns, True, where, problems)
    lo, hi = item.get("min"), item.get("max")
    for key, v in (("min", lo), ("max", hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            problems.append(f"{where}: '{key}' must be a number, got {v!r}")
            return None
    if lo is None and hi is None:
        problems.append(f"{where}: a range needs 'min', 'max' or both")
        return None
    if col is None:
        return None
    return RangeConstraint(
        col.name, None if lo is None else float(lo), None if hi is None else float(hi)
    )


def _clause(raw: Any, columns: dict[str, Column], where: str, problems: list[str]) -> Clause:
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{where} must be a non-empty object mapping column to value(s)")
        return ()
    out = []
    for name, value in raw.items():
        col = _column(name, columns, False, where, problems)
        values = [value] if isinstance(value, str) else value
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            problems.append(f"{where}: {name!r} must map to a category or a list of categories")
            continue
        if col is None:
            continue
        unknown = [v for v in values if v not in col.categories]
        if unknown:
            problems.append(
                f"{where}: {unknown!r} not in the categories of {name!r} "
                f"{list(col.categories)[:8]!r}; correct the spelling"
            )
            continue
        out.append((str(name), tuple(dict.fromkeys(values))))
    return tuple(sorted(out))


def _parse_implies(
    item: dict[str, Any], columns: dict[str, Column], where: str, problems: list[str]
) -> Constraint | None:
    premise = _clause(item.get("if"), columns, f"{where} 'if'", problems)
    conclusion = _clause(item.get("then"), columns, f"{where} 'then'", problems)
    shared = {c for c, _ in premise} & {c for c, _ in conclusion}
    if shared:
        problems.append(f"{where}: column(s) {sorted(shared)} appear in both 'if' and 'then'")
    return Implication(premise, conclusion) if premise and conclusion else None


def _parse_compare(
    item: dict[str, Any], columns: dict[str, Column], where: str, problems: list[str]
) -> Constraint | None:
    left = _column(item.get("left"), columns, True, where, problems)
    right = _column(item.get("right"), columns, True, where, problems)
    op = item.get("op")
    if op not in OPS:
        problems.append(f"{where}: 'op' must be one of {list(OPS)}, got {op!r}")
        return None
    if left is None or right is None:
        return None
    if left.name == right.name:
        problems.append(f"{where}: compares {left.name!r} with itself; name two columns")
        return None
    return Comparison(left.name, op, right.name)


def _parse_combinations(
    item: dict[str, Any], columns: dict[str, Column], where: str, problems: list[str]
) -> Constraint | None:
    names, allowed = item.get("columns"), item.get("allowed")
    if not isinstance(names, list) or len(names) < 2 or len(set(map(str, names))) != len(names):
        problems.append(f"{where}: 'columns' must list two or more distinct categorical columns")
        return None
    cols = [_column(n, columns, False, where, problems) for n in names]
    if not isinstance(allowed, list) or not allowed or len(allowed) > _MAX_ALLOWED:
        problems.append(f"{where}: 'allowed' must be a list of 1..{_MAX_ALLOWED} value lists")
        return None
    tuples: list[tuple[str, ...]] = []
    for j, combo in enumerate(allowed):
        if not isinstance(combo, list) or len(combo) != len(names):
            problems.append(f"{where}: allowed[{j}] must list {len(names)} values, one per column")
            continue
        for col, value in zip(cols, combo, strict=True):
            if col is not None and value not in col.categories:
                problems.append(
                    f"{where}: allowed[{j}] has {value!r}, which is not a category of "
                    f"{col.name!r} {list(col.categories)[:8]!r}; correct it or drop the tuple"
                )
        tuples.append(tuple(str(v) for v in combo))
    if any(c is None for c in cols):
        return None
    return Combinations(tuple(str(n) for n in names), tuple(sorted(set(tuples))))


_PARSERS: dict[
    str, Callable[[dict[str, Any], dict[str, Column], str, list[str]], Constraint | None]
] = {
    "range": _parse_range,
    "implies": _parse_implies,
    "compare": _parse_compare,
    "combinations": _parse_combinations,
}
