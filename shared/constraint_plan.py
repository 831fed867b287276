"""Decide whether a schema's constraints can be met, and plan how to meet them.

The plan is what makes construction possible (no rejection for the VAE):

* **Numeric columns.** Each column starts from its schema bounds, narrowed by
  ``range`` constraints (integer columns to whole numbers). ``compare``
  constraints form a directed graph ``small → big``; it must be acyclic. One
  forward pass in topological order raises lower bounds, one backward pass
  lowers upper bounds (longest-path propagation, exact on a DAG). Afterwards
  every value inside a column's interval can be completed: a sampler that draws
  columns in topological order, each inside ``[above(predecessors), upper]``,
  never meets an empty interval. Strict comparisons use the next representable
  value (next integer, or the next float), so rounding cannot break them.
  A public atom (:mod:`shared.schema`) is one such value: the sampler allows it
  in a row only when it lies inside that row's interval. An atom outside the
  column's planned interval could never occur, which contradicts the schema
  that declares it, so the plan refuses it (as it refuses a dead category).
* **Categorical columns.** Columns linked by ``implies``/``combinations`` form
  components. The joint values of each component are enumerated once (the
  product of the category counts must stay below :data:`MAX_JOINT`) and the
  feasible tuples kept, so a sampler can pick a whole tuple per row. A category
  that no feasible tuple uses contradicts the schema, which lists it as valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared.constraints import Combinations, Comparison, Constraint, Implication, RangeConstraint

if TYPE_CHECKING:
    from shared.schema import Column

MAX_JOINT = 1_000_000


def above(x: np.ndarray, strict: bool, integer: bool) -> np.ndarray:
    """Smallest value of a column (integer or not) that is ``>`` (or ``>=``) ``x``."""
    if integer:
        return np.asarray(np.floor(x) + 1.0 if strict else np.ceil(x), dtype=np.float64)
    return np.asarray(np.nextafter(x, np.inf) if strict else x, dtype=np.float64)


def below(x: np.ndarray, strict: bool, integer: bool) -> np.ndarray:
    """Largest value of a column (integer or not) that is ``<`` (or ``<=``) ``x``."""
    if integer:
        return np.asarray(np.ceil(x) - 1.0 if strict else np.floor(x), dtype=np.float64)
    return np.asarray(np.nextafter(x, -np.inf) if strict else x, dtype=np.float64)


@dataclass(frozen=True)
class Edge:
    """``small < big`` (strict) or ``small <= big``, from one ``compare`` constraint."""

    small: str
    big: str
    strict: bool
    source: Comparison


@dataclass(frozen=True)
class Component:
    """Categorical columns linked by constraints, with their feasible joint values.

    ``feasible[f, i]`` is the slot (category index; the last slot of a nullable
    column means missing) of ``columns[i]`` in feasible tuple ``f``.
    """

    columns: tuple[str, ...]
    feasible: np.ndarray
    constraints: tuple[Constraint, ...]


@dataclass(frozen=True)
class ConstraintPlan:
    """Intervals, sampling order and categorical components of a schema."""

    lower: dict[str, float]
    upper: dict[str, float]
    order: tuple[str, ...]
    edges: tuple[Edge, ...]
    components: tuple[Component, ...]

    def component_of(self, column: str) -> Component | None:
        """The categorical component holding ``column``, if any."""
        for comp in self.components:
            if column in comp.columns:
                return comp
        return None


def build_plan(
    columns: tuple[Column, ...], constraints: tuple[Constraint, ...], problems: list[str]
) -> ConstraintPlan:
    """Build the plan, appending a problem for every contradiction found."""
    lower, upper, order, edges = _numeric(columns, constraints, problems)
    components = _categorical(columns, constraints, problems)
    return ConstraintPlan(lower, upper, order, edges, components)


def _numeric(
    columns: tuple[Column, ...], constraints: tuple[Constraint, ...], problems: list[str]
) -> tuple[dict[str, float], dict[str, float], tuple[str, ...], tuple[Edge, ...]]:
    cols = {c.name: c for c in columns if c.is_numeric}
    lower = {n: c.minimum for n, c in cols.items()}
    upper = {n: c.maximum for n, c in cols.items()}
    edges: list[Edge] = []
    for con in constraints:
        if isinstance(con, RangeConstraint):
            if con.minimum is not None:
                lower[con.column] = max(lower[con.column], con.minimum)
            if con.maximum is not None:
                upper[con.column] = min(upper[con.column], con.maximum)
        elif isinstance(con, Comparison):
            strict = con.op in ("<", ">")
            small, big = (con.left, con.right) if con.op in ("<", "<=") else (con.right, con.left)
            edges.append(Edge(small, big, strict, con))
    for n, c in cols.items():
        if c.kind == "integer":
            lower[n], upper[n] = math.ceil(lower[n]), math.floor(upper[n])
        if lower[n] > upper[n]:
            problems.append(
                f"constraints: column {n!r} has no possible value: its 'range' constraints "
                f"leave nothing inside its bounds {c.minimum:g}..{c.maximum:g}; correct them"
            )
    order = _topological(list(cols), edges, problems)
    if order is None:
        return lower, upper, tuple(cols), tuple(edges)

    def integer(name: str) -> bool:
        return cols[name].kind == "integer"

    for name in order:  # forward: lower bounds from predecessors
        for e in (e for e in edges if e.big == name):
            raised = float(above(np.array(lower[e.small]), e.strict, integer(name)))
            lower[name] = max(lower[name], raised)
    for name in reversed(order):  # backward: upper bounds from successors
        for e in (e for e in edges if e.small == name):
            lowered = float(below(np.array(upper[e.big]), e.strict, integer(name)))
            upper[name] = min(upper[name], lowered)
    for name in order:
        if lower[name] > upper[name] and any(name in (e.small, e.big) for e in edges):
            rules = "; ".join(e.source.describe() for e in edges if name in (e.small, e.big))
            problems.append(
                f"constraints: column {name!r} cannot satisfy {rules} within the columns' bounds "
                f"(it would need {lower[name]:g} <= {name} <= {upper[name]:g}); widen the bounds "
                "or correct the comparison"
            )
    for name, c in cols.items():
        dead = [a for a in c.atoms if not lower[name] <= a <= upper[name]]
        if dead and lower[name] <= upper[name]:
            problems.append(
                f"constraints contradict the schema: {name!r} could never be at its atom(s) "
                f"{[int(a) if c.kind == 'integer' else a for a in dead]} (the constraints allow "
                f"only {lower[name]:g} <= {name} <= {upper[name]:g}); correct the constraints "
                "or drop the atom"
            )
    return lower, upper, order, tuple(edges)


def _topological(
    names: list[str], edges: list[Edge], problems: list[str]
) -> tuple[str, ...] | None:
    indegree = {n: 0 for n in names}
    for e in edges:
        indegree[e.big] += 1
    ready = [n for n in names if indegree[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for e in edges:
            if e.small == n:
                indegree[e.big] -= 1
                if indegree[e.big] == 0:
                    ready.append(e.big)
    if len(order) < len(names):
        cycle = sorted({e.source.describe() for e in edges if indegree[e.big] > 0})
        problems.append(
            f"constraints: the comparisons {cycle} go round in a circle, so they contradict each "
            "other (or force equality); remove one of them"
        )
        return None
    return tuple(order)


def _categorical(
    columns: tuple[Column, ...], constraints: tuple[Constraint, ...], problems: list[str]
) -> tuple[Component, ...]:
    cols = {c.name: c for c in columns}
    linked = [c for c in constraints if isinstance(c, Implication | Combinations)]
    parent = {c.name: c.name for c in columns if not c.is_numeric}

    def root(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for con in linked:
        first = root(con.columns[0])
        for other in con.columns[1:]:
            parent[root(other)] = first
    groups: dict[str, list[str]] = {}
    for con in linked:
        for name in con.columns:
            groups.setdefault(root(name), [])
    for name in parent:
        if root(name) in groups:
            groups[root(name)].append(name)
    order = {c.name: i for i, c in enumerate(columns)}
    out = []
    for members in groups.values():
        names = tuple(sorted(members, key=order.__getitem__))
        rules = tuple(c for c in linked if c.columns[0] in names)
        comp = _enumerate(names, [cols[n] for n in names], rules, problems)
        if comp is not None:
            out.append(comp)
    return tuple(out)


def _enumerate(
    names: tuple[str, ...],
    cols: list[Column],
    rules: tuple[Constraint, ...],
    problems: list[str],
) -> Component | None:
    sizes = [len(c.categories) + (1 if c.nullable else 0) for c in cols]
    text = "; ".join(r.describe() for r in rules)
    if math.prod(sizes) > MAX_JOINT:
        problems.append(
            f"constraints on {list(names)} span {math.prod(sizes):,} joint values (limit "
            f"{MAX_JOINT:,}); split them into constraints over fewer or smaller columns"
        )
        return None
    axis = {n: i for i, n in enumerate(names)}

    def member(name: str, values: tuple[str, ...]) -> np.ndarray:
        col = cols[axis[name]]
        vec = np.array(
            [
                s < len(col.categories) and col.categories[s] in values
                for s in range(sizes[axis[name]])
            ]
        )
        shape = [1] * len(names)
        shape[axis[name]] = sizes[axis[name]]
        return vec.reshape(shape)

    def missing(name: str) -> np.ndarray:
        col = cols[axis[name]]
        vec = np.arange(sizes[axis[name]]) >= len(col.categories)
        shape = [1] * len(names)
        shape[axis[name]] = sizes[axis[name]]
        return vec.reshape(shape)

    feasible = np.ones(sizes, dtype=bool)
    for rule in rules:
        if isinstance(rule, Implication):
            holds = np.ones(sizes, dtype=bool)
            for c, v in rule.premise:
                holds = holds & member(c, v)
            broken = np.zeros(sizes, dtype=bool)
            for c, v in rule.conclusion:
                broken = broken | ~(member(c, v) | missing(c))
            feasible &= ~(holds & broken)
        elif isinstance(rule, Combinations):
            any_missing = np.zeros(sizes, dtype=bool)
            for c in rule.columns:
                any_missing = any_missing | missing(c)
            ok = np.zeros(sizes, dtype=bool)
            for combo in rule.allowed:
                match = np.ones(sizes, dtype=bool)
                for c, value in zip(rule.columns, combo, strict=True):
                    match = match & member(c, (value,))
                ok |= match
            feasible &= ok | any_missing
    if not feasible.any():
        problems.append(f"constraints [{text}] contradict each other: no row can satisfy them all")
        return None
    for i, col in enumerate(cols):
        used = np.asarray(feasible.any(axis=tuple(j for j in range(len(names)) if j != i)))
        dead = [col.categories[s] for s in range(len(col.categories)) if not used[s]]
        if dead:
            problems.append(
                f"constraints [{text}] contradict the schema: {col.name!r} could never be "
                f"{dead!r}, yet the schema lists it; correct the constraints or drop the category"
            )
    return Component(names, np.argwhere(feasible), rules)
