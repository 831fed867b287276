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
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from shared.constraint_parse import parse_constraints
from shared.constraint_plan import build_plan
from shared.constraints import Constraint
from shared.errors import SchemaError

SCHEMA_VERSION = 1
#: The version that introduced ``constraints``; both are read.
CONSTRAINTS_VERSION = 2
SUPPORTED_VERSIONS = (SCHEMA_VERSION, CONSTRAINTS_VERSION)
ColumnKind = Literal["categorical", "integer", "continuous"]
KINDS: tuple[str, ...] = ("categorical", "integer", "continuous")
ROLES: tuple[str, ...] = ("target", "treatment", "outcome")
_COLUMN_KEYS = {"name", "type", "categories", "min", "max", "nullable", "description", "atoms"}
_MAX_CATEGORIES = 1000
#: Atoms per numeric column; each is one more output slot of the generator.
MAX_ATOMS = 32
_MAX_NAME = 200


@dataclass(frozen=True)
class Column:
    """One column of the public schema.

    Attributes
    ----------
    name : str
        Column header as it appears in every site's table.
    kind : {"categorical", "integer", "continuous"}
        How the column is modelled.
    categories : tuple of str
        The full, public category list (categorical columns only).
    minimum, maximum : float
        Documented public bounds (numeric columns only), inclusive.
    nullable : bool
        Whether missing values are allowed; their rate is learned under DP.
    atoms : tuple of float
        Public point masses of a numeric column (values many rows hold exactly),
        in the order the schema lists them; empty for most columns.
    """

    name: str
    kind: ColumnKind
    categories: tuple[str, ...] = ()
    minimum: float = 0.0
    maximum: float = 0.0
    nullable: bool = False
    description: str = ""
    atoms: tuple[float, ...] = ()

    @property
    def is_numeric(self) -> bool:
        """True for integer and continuous columns."""
        return self.kind != "categorical"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of this column."""
        out: dict[str, Any] = {"name": self.name, "type": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        else:
            lo, hi = self.minimum, self.maximum
            out["min"] = int(lo) if self.kind == "integer" else lo
            out["max"] = int(hi) if self.kind == "integer" else hi
            if self.atoms:  # omitted when empty, so older schemas keep their fingerprint
                out["atoms"] = [int(a) if self.kind == "integer" else a for a in self.atoms]
        if self.nullable:
            out["nullable"] = True
        if self.description:
            out["description"] = self.description
        return out


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
            raise SchemaError(source, [f"top level must be a JSON object, got {_tname(doc)}"])
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
                col = _parse_column(raw, i, problems)
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


def _tname(value: Any) -> str:
    return type(value).__name__


def _is_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def _parse_column(raw: Any, index: int, problems: list[str]) -> Column | None:
    where = f"columns[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object, got {_tname(raw)}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        problems.append(f"{where}: 'name' must be a non-empty string of at most {_MAX_NAME} chars")
        return None
    where = f"column {name!r}"
    unknown = set(raw) - _COLUMN_KEYS
    if unknown:
        problems.append(f"{where}: unknown field(s) {sorted(unknown)}; remove them")
    kind = raw.get("type")
    if kind not in KINDS:
        problems.append(f"{where}: 'type' must be one of {list(KINDS)}, got {kind!r}")
        return None
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        problems.append(f"{where}: 'nullable' must be true or false, got {nullable!r}")
        nullable = False
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(f"{where}: 'description' must be a string")
        description = ""
    if kind == "categorical":
        cats = raw.get("categories")
        if "min" in raw or "max" in raw:
            problems.append(f"{where}: categorical columns take 'categories', not 'min'/'max'")
        if "atoms" in raw:
            problems.append(
                f"{where}: 'atoms' are point masses of numeric columns; a categorical column "
                "already gives every category its own slot, so remove 'atoms'"
            )
        if not isinstance(cats, list) or len(cats) < 1:
            problems.append(f"{where}: 'categories' must be a non-empty list of strings")
            return None
        if len(cats) > _MAX_CATEGORIES:
            problems.append(
                f"{where}: {len(cats)} categories exceed the limit of {_MAX_CATEGORIES}"
            )
            return None
        bad = [c for c in cats if not isinstance(c, str) or not c or len(c) > _MAX_NAME]
        if bad:
            problems.append(
                f"{where}: categories must be non-empty strings of at most {_MAX_NAME} chars "
                f'(write numbers as strings, e.g. "1"); bad: {bad[:3]!r}'
            )
            return None
        if len(set(cats)) != len(cats):
            problems.append(f"{where}: 'categories' has duplicates; list each once")
            return None
        return Column(name, "categorical", tuple(cats), nullable=nullable, description=description)
    raw_lo, raw_hi = raw.get("min"), raw.get("max")
    if "categories" in raw:
        problems.append(f"{where}: numeric columns take 'min'/'max', not 'categories'")
    if not _is_number(raw_lo) or not _is_number(raw_hi):
        problems.append(
            f"{where}: numeric columns need finite numbers 'min' and 'max' (the documented "
            f"public bounds), got min={raw_lo!r}, max={raw_hi!r}"
        )
        return None
    lo, hi = float(cast(float, raw_lo)), float(cast(float, raw_hi))
    if not lo < hi:
        problems.append(f"{where}: 'min' ({raw_lo}) must be below 'max' ({raw_hi})")
        return None
    if kind == "integer" and not (lo.is_integer() and hi.is_integer()):
        problems.append(f"{where}: integer columns need integral bounds, got {raw_lo}..{raw_hi}")
        return None
    atoms = _parse_atoms(raw, where, kind, lo, hi, problems)
    return Column(
        name, kind, minimum=lo, maximum=hi, nullable=nullable, description=description, atoms=atoms
    )


def _parse_atoms(
    raw: dict[str, Any], where: str, kind: str, lo: float, hi: float, problems: list[str]
) -> tuple[float, ...]:
    """The column's public point masses, checked; ``()`` when absent or invalid."""
    if "atoms" not in raw:
        return ()
    values = raw["atoms"]
    if not isinstance(values, list) or not values or len(values) > MAX_ATOMS:
        problems.append(
            f"{where}: 'atoms' must be a non-empty list of at most {MAX_ATOMS} numbers (the "
            f"values many rows hold exactly, e.g. [0]), got {str(values)[:60]}; remove the "
            "field if the column has none"
        )
        return ()
    bad = [v for v in values if not _is_number(v)]
    if bad:
        problems.append(f"{where}: 'atoms' must be finite numbers; bad: {bad[:3]!r}")
        return ()
    atoms = tuple(float(v) for v in values)
    before = len(problems)
    outside = [v for v, a in zip(values, atoms, strict=True) if not lo <= a <= hi]
    if outside:
        problems.append(
            f"{where}: atoms {outside[:3]!r} lie outside the bounds {lo:g}..{hi:g}; widen the "
            "bounds or correct the atoms"
        )
    if kind == "integer" and not all(a.is_integer() for a in atoms):
        problems.append(f"{where}: an integer column's atoms must be whole numbers, got {values!r}")
    if len(set(atoms)) != len(atoms):
        problems.append(f"{where}: 'atoms' has duplicates ({values!r}); list each value once")
    return atoms if len(problems) == before else ()


def _parse_roles(raw: Any, columns: dict[str, Column], problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.append(f"'roles' must be an object mapping role to column, got {_tname(raw)}")
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


def category_text(value: Any) -> str:
    """Canonical text of a categorical cell, as compared with the schema's category list.

    Booleans read as ``"true"``/``"false"``; integral floats (Parquet, or ints that
    went through NaN) as their integer (``1.0`` → ``"1"``); anything else as ``str``.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)
