"""One column of the public schema: its fields, and the checks of its JSON form.

:mod:`shared.schema` holds the whole document (columns, roles, constraints) and
its format; this module holds what one entry of ``"columns"`` may say: a type,
categories or public bounds, ``nullable``, a description, for a categorical
column whether its categories are ``ordered`` (listed lowest first), and for a
numeric column public ``atoms`` (values many rows hold exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

ColumnKind = Literal["categorical", "integer", "continuous"]
KINDS: tuple[str, ...] = ("categorical", "integer", "continuous")
_COLUMN_KEYS = {
    "name",
    "type",
    "categories",
    "ordered",
    "min",
    "max",
    "nullable",
    "description",
    "atoms",
}
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
    ordered : bool
        Categorical columns only: the categories are levels listed lowest first
        (education, a severity scale), so neighbours in the list are alike.
        Generators that place categories on a scale (``dp-copula``) keep this
        order; otherwise they may choose one.
    """

    name: str
    kind: ColumnKind
    categories: tuple[str, ...] = ()
    minimum: float = 0.0
    maximum: float = 0.0
    nullable: bool = False
    description: str = ""
    atoms: tuple[float, ...] = ()
    ordered: bool = False

    @property
    def is_numeric(self) -> bool:
        """True for integer and continuous columns."""
        return self.kind != "categorical"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of this column."""
        out: dict[str, Any] = {"name": self.name, "type": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
            if self.ordered:  # omitted when false, so older schemas keep their fingerprint
                out["ordered"] = True
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


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    return type(value).__name__


def _is_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def parse_column(raw: Any, index: int, problems: list[str]) -> Column | None:
    """The :class:`Column` of ``columns[index]``, or None; each problem is appended."""
    where = f"columns[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be an object, got {type_name(raw)}")
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
        ordered = raw.get("ordered", False)
        if not isinstance(ordered, bool):
            problems.append(
                f"{where}: 'ordered' must be true (categories listed lowest first) or false, "
                f"got {ordered!r}"
            )
            ordered = False
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
        return Column(
            name,
            "categorical",
            tuple(cats),
            nullable=nullable,
            description=description,
            ordered=ordered,
        )
    raw_lo, raw_hi = raw.get("min"), raw.get("max")
    if "categories" in raw:
        problems.append(f"{where}: numeric columns take 'min'/'max', not 'categories'")
    if "ordered" in raw:
        problems.append(
            f"{where}: 'ordered' describes a categorical column's list; a numeric column is "
            "ordered by its values, so remove 'ordered'"
        )
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
