"""The public table schema: the consortium's agreed description of every column.

The schema is public knowledge. It is written down (and versioned) by the
consortium before training and shipped to every site and to the server. The
transformer, the generator's output layer and the validation of each site's
table are all derived from it, never from private rows.

Document format (``fedsynth_schema_version`` 1)::

    {
      "fedsynth_schema_version": 1,
      "name": "cohort",
      "columns": [
        {"name": "age", "type": "integer", "min": 18, "max": 95},
        {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
        {"name": "smoker", "type": "categorical", "categories": ["never", "former", "current"],
         "ordered": true},
        {"name": "bmi", "type": "continuous", "min": 15, "max": 60, "nullable": true},
        {"name": "cost", "type": "continuous", "min": 0, "max": 1e6, "atoms": [0]}
      ],
      "roles": {"target": "died", "treatment": "statin", "outcome": "ldl_change"}
    }

Version 2 adds an optional ``"constraints"`` list (see :mod:`shared.constraints`).
Version 1 documents stay valid and keep their fingerprint; a document that
declares constraints must say version 2, so an older fedsynth refuses it
instead of silently ignoring the rules.

A numeric column may list ``"atoms"``: public values that many rows hold
exactly (a cost of 0 for patients with no visit, a lab value at its detection
limit, a limitation score that is mostly exactly 0 or 1). The encoding gives
each atom a slot of its own (:mod:`shared.transforms`), so a generator can put
mass on the point instead of smearing it over a continuous density. Atoms are
declared by the consortium from the codebook, never inferred from rows; each
lies within the column's bounds, they are distinct, and integral for integer
columns. The field needs no new version: a fedsynth that predates it refuses
the unknown column field instead of ignoring it, and a schema without atoms
keeps its fingerprint.

A categorical column may say ``"ordered": true`` when its categories are levels
listed lowest first (education, a severity scale). Generators that place
categories on a scale (``dp-copula``) keep that order; an unordered column's
order is theirs to choose. Like atoms, it needs no new version, and a schema
that never says it keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.constraint_parse import parse_constraints
from shared.constraint_plan import build_plan
from shared.constraints import Constraint
from shared.errors import SchemaError
from shared.schema_column import Column, category_text, parse_column, type_name

SCHEMA_VERSION = 1
#: The version that introduced ``constraints``; both are read.
CONSTRAINTS_VERSION = 2
SUPPORTED_VERSIONS = (SCHEMA_VERSION, CONSTRAINTS_VERSION)
ROLES: tuple[str, ...] = ("target", "treatment", "outcome")
#: ``Column`` and ``category_text`` live in :mod:`shared.schema_column`; they are
#: imported from here too, with the schema they belong to.
__all__ = ["CONSTRAINTS_VERSION", "ROLES", "SCHEMA_VERSION", "Column", "Schema", "category_text"]


@dataclass(frozen=True)
class Schema:
    """A validated, immutable table schema.

    Build one with :meth:`from_dict` or :meth:`load`; both collect every
    problem in the document and raise a single :class:`SchemaError`.
    """

    name: str
    columns: tuple[Column, ...]
    roles: dict[str, str] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    constraints: tuple[Constraint, ...] = ()

    @property
    def names(self) -> list[str]:
        """Column names in schema order."""
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """Return the column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"column {name!r} is not in schema {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document for this schema."""
        doc: dict[str, Any] = {
            "fedsynth_schema_version": self.version,
            "name": self.name,
            "columns": [c.to_dict() for c in self.columns],
        }
        if self.roles:
            doc["roles"] = dict(sorted(self.roles.items()))
        if self.constraints:
            doc["constraints"] = [c.to_dict() for c in self.constraints]
        return doc

    def canonical_json(self) -> str:
        """JSON with sorted keys and no whitespace: the input to :meth:`fingerprint`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON; sites and server compare it before training."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write the schema as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Read and validate a schema file.

        Raises
        ------
        SchemaError
            If the file is missing, not JSON, or any field is invalid.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(
                str(p), ["file not found; pass the consortium's schema JSON"]
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(str(p), [f"cannot be read as UTF-8 text ({exc})"]) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(
                str(p), [f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"]
            ) from None
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, deep nesting
            raise SchemaError(
                str(p), [f"is not a usable JSON document ({str(exc)[:120]})"]
            ) from None
        return cls.from_dict(doc, source=str(p))

    @classmethod
    def from_dict(cls, doc: Any, *, source: str = "<schema>") -> Schema:
        """Validate a parsed JSON document and build a :class:`Schema`.

        Every problem is collected before raising, so one run shows them all.
        """
        problems: list[str] = []
        if not isinstance(doc, dict):
            raise SchemaError(source, [f"top level must be a JSON object, got {type_name(doc)}"])
        version = doc.get("fedsynth_schema_version")
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            problems.append(
                f"'fedsynth_schema_version' must be {SCHEMA_VERSION} or {CONSTRAINTS_VERSION} "
                f"(got {version!r}); add the field or convert the document"
            )
            version = SCHEMA_VERSION
        name = doc.get("name", "table")
        if not isinstance(name, str) or not name:
            problems.append("'name' must be a non-empty string")
            name = "table"
        raw_cols = doc.get("columns")
        columns: list[Column] = []
        if not isinstance(raw_cols, list) or not raw_cols:
            problems.append("'columns' must be a non-empty list of column objects")
        else:
            seen: set[str] = set()
            for i, raw in enumerate(raw_cols):
                col = parse_column(raw, i, problems)
                if col is None:
                    continue
                if col.name in seen:
                    problems.append(f"column {col.name!r} is listed twice; keep one entry")
                seen.add(col.name)
                columns.append(col)
        roles = _parse_roles(doc.get("roles", {}), {c.name: c for c in columns}, problems)
        constraints = _parse_constraints(doc, version, columns, problems)
        top = {"fedsynth_schema_version", "name", "columns", "roles", "description", "constraints"}
        unknown = set(doc) - top
        if unknown:
            problems.append(f"unknown top-level field(s) {sorted(unknown)}; remove them")
        if problems:
            raise SchemaError(source, problems)
        return cls(
            name=name,
            columns=tuple(columns),
            roles=roles,
            version=version,
            constraints=constraints,
        )


def _parse_constraints(
    doc: dict[str, Any], version: int, columns: list[Column], problems: list[str]
) -> tuple[Constraint, ...]:
    if "constraints" not in doc:
        return ()
    if version != CONSTRAINTS_VERSION:
        problems.append(
            f"'constraints' need \"fedsynth_schema_version\": {CONSTRAINTS_VERSION}; "
            "change the version (so a fedsynth that predates constraints refuses the schema "
            "instead of ignoring the rules)"
        )
    before = len(problems)
    constraints = parse_constraints(doc["constraints"], {c.name: c for c in columns}, problems)
    if len(problems) == before:  # only a well-formed set can be checked for contradictions
        build_plan(tuple(columns), constraints, problems)
    return constraints


def _parse_roles(raw: Any, columns: dict[str, Column], problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.append(f"'roles' must be an object mapping role to column, got {type_name(raw)}")
        return {}
    roles: dict[str, str] = {}
    for role, col in raw.items():
        if role not in ROLES:
            problems.append(f"roles: unknown role {role!r}; use one of {list(ROLES)}")
        elif not isinstance(col, str) or (columns and col not in columns):
            problems.append(f"roles: {role!r} names {col!r}, which is not a column of the schema")
        else:
            roles[role] = col
    treatment = roles.get("treatment")
    if treatment and treatment in columns:
        tcol = columns[treatment]
        if tcol.kind != "categorical" or len(tcol.categories) != 2:
            problems.append(
                f"roles: treatment column {treatment!r} must be categorical with exactly two "
                "categories (control first, treated second)"
            )
    return roles
