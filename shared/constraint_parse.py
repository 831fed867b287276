"""Read the schema's ``constraints`` list (see :mod:`shared.constraints` for the kinds).

Checks what one constraint alone can get wrong: unknown fields or columns, a
column of the wrong type, categories not in the column's list, malformed
values. Whether the constraints together can be met is checked by
:func:`shared.constraint_plan.build_plan`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.constraints import (
    OPS,
    Clause,
    Combinations,
    Comparison,
    Constraint,
    Implication,
    RangeConstraint,
)

if TYPE_CHECKING:
    from shared.schema import Column

_KINDS = ("range", "implies", "compare", "combinations")
_KEYS = {
    "range": {"type", "column", "min", "max"},
    "implies": {"type", "if", "then"},
    "compare": {"type", "left", "op", "right"},
    "combinations": {"type", "columns", "allowed"},
}
_MAX_ALLOWED = 10_000


def parse_constraints(
    raw: Any, columns: dict[str, Column], problems: list[str]
) -> tuple[Constraint, ...]:
    """Parse the schema's ``constraints`` list, appending every problem found."""
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
