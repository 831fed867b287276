"""Inputs of an evaluation: tables, roles, sample sizes, and the shared encoding.

Every metric module works on validated frames (``shared.tables.validate_frame``
output: categoricals as ``object`` strings with ``None`` for missing, numerics as
``float64`` with ``NaN``) and, where it needs vectors, on the schema-only
encoding of :class:`shared.transforms.TableTransformer` (one-hot categoricals,
numerics scaled from the public bounds to [-1, 1], missing indicators). Using the
schema encoding everywhere means distances and models see every table the same
way, and nothing is fitted on the rows being judged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.evaluation.errors import EvaluationError
from shared.schema import Schema
from shared.tables import load_table, validate_frame
from shared.transforms import TableTransformer

TableLike = pd.DataFrame | str | Path


@dataclass(frozen=True)
class Limits:
    """Sample sizes for the metrics whose cost grows faster than the row count.

    Every size actually used is written to ``report.json`` under ``sizes``.

    Attributes
    ----------
    detection_rows : int
        Rows drawn from each of real and synthetic for the detection classifier.
    privacy_reference_rows : int
        Rows drawn from each of train and holdout as DCR references and as
        membership-inference candidates (members / non-members).
    privacy_synthetic_rows : int
        Synthetic rows whose distances to closest record (DCR) are measured.
    mia_synthetic_rows : int
        Synthetic rows the membership-inference attacker searches.
    importance_rows : int
        Real test rows used for permutation importance.
    importance_repeats : int
        Shuffles per column for permutation importance.
    bootstrap_resamples : int
        Bootstrap resamples for the ATE confidence interval.
    threads : int or None
        OpenMP/BLAS threads for model fitting; ``None`` uses every core. One by
        default: gradient boosting's OpenMP threads spin while they wait, so on
        a shared CPU (a hospital server, a CI runner) extra threads make it many
        times slower, while on two idle cores one thread is about as fast.
    """

    detection_rows: int = 10_000
    privacy_reference_rows: int = 5_000
    privacy_synthetic_rows: int = 5_000
    mia_synthetic_rows: int = 20_000
    importance_rows: int = 2_000
    importance_repeats: int = 3
    bootstrap_resamples: int = 1_000
    threads: int | None = 1

    def to_dict(self) -> dict[str, int | None]:
        """Return the limits as a JSON object."""
        return asdict(self)


@dataclass(frozen=True)
class Roles:
    """Columns with a special meaning for utility and causal checks (``None`` if absent)."""

    target: str | None
    treatment: str | None
    outcome: str | None


def as_schema(schema: Schema | str | Path) -> Schema:
    """Return ``schema`` itself, or load it from a JSON file."""
    return schema if isinstance(schema, Schema) else Schema.load(schema)


def as_table(table: TableLike, schema: Schema, label: str) -> pd.DataFrame:
    """Load a CSV/Parquet path, or validate an in-memory frame, against ``schema``.

    Parameters
    ----------
    table : DataFrame, str or Path
        The table or its file.
    schema : Schema
        Public schema every table must match.
    label : str
        Role of the table in messages (``"real"``, ``"synthetic"``, ``"train"``).
    """
    if isinstance(table, pd.DataFrame):
        frame = validate_frame(table, schema, source=f"<{label} table>")
    else:
        frame = load_table(table, schema)
    if len(frame) < 10:
        raise EvaluationError(
            f"the {label} table has {len(frame)} row(s); the evaluation needs at least 10 "
            "(pass the full table, not a preview)"
        )
    return frame.reset_index(drop=True)


def resolve_roles(
    schema: Schema, target: str | None, treatment: str | None, outcome: str | None
) -> Roles:
    """Fill roles from ``schema.roles`` and check that each names a usable column.

    Raises
    ------
    EvaluationError
        If a role names a missing column, the treatment is not a two-category
        categorical, the outcome is neither numeric nor binary, or only one of
        treatment/outcome was given explicitly and the other has no default.
    """
    explicit_causal = treatment is not None or outcome is not None
    target = target or schema.roles.get("target")
    treatment = treatment or schema.roles.get("treatment")
    outcome = outcome or schema.roles.get("outcome")
    for role, name in (("target", target), ("treatment", treatment), ("outcome", outcome)):
        if name is not None and name not in schema.names:
            raise EvaluationError(
                f"--{role} {name!r} is not a column of schema {schema.name!r}; "
                f"use one of {schema.names}"
            )
    if explicit_causal and (treatment is None or outcome is None):
        missing = "--outcome" if outcome is None else "--treatment"
        raise EvaluationError(
            f"causal validity needs both a treatment and an outcome column; pass {missing} "
            "(or add the role to the schema's 'roles')"
        )
    if treatment is not None:
        col = schema.column(treatment)
        if col.kind != "categorical" or len(col.categories) != 2:
            raise EvaluationError(
                f"treatment column {treatment!r} must be categorical with exactly two "
                f"categories (control first, treated second); the schema says {col.kind} "
                f"{list(col.categories) if col.categories else ''}".rstrip()
            )
    if outcome is not None:
        col = schema.column(outcome)
        if col.kind == "categorical" and len(col.categories) != 2:
            raise EvaluationError(
                f"outcome column {outcome!r} must be numeric or binary categorical; it has "
                f"{len(col.categories)} categories. Pick a numeric outcome or recode it to two"
            )
    if treatment is not None and treatment == outcome:
        raise EvaluationError(f"treatment and outcome are both {treatment!r}; pick two columns")
    return Roles(target=target, treatment=treatment, outcome=outcome)


def sub_schema(schema: Schema, exclude: set[str]) -> Schema:
    """The schema without the columns in ``exclude`` (e.g. the prediction target)."""
    cols = tuple(c for c in schema.columns if c.name not in exclude)
    return Schema(name=schema.name, columns=cols, roles={})


def encode(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Schema-normalised float64 matrix of ``frame`` (columns of ``schema`` only)."""
    return TableTransformer(schema).encode(frame[schema.names]).astype(np.float64)


def sample_rows(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Up to ``n`` rows drawn without replacement (all rows, shuffled, if fewer)."""
    take = rng.permutation(len(frame))[: min(n, len(frame))]
    return frame.iloc[np.sort(take)].reset_index(drop=True)


def load_privacy_report(report: dict[str, Any] | str | Path) -> list[dict[str, Any]]:
    """Per-site ε and δ from a ``privacy_report.json`` (see :mod:`server.report`).

    Raises
    ------
    EvaluationError
        If the file is missing, not JSON, or lacks a ``sites`` list with
        ``site``, ``epsilon`` and ``delta`` for each entry.
    """
    source = "<privacy report>"
    if not isinstance(report, dict):
        source = str(report)
        try:
            report = json.loads(Path(report).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EvaluationError(
                f"privacy report {source} not found; pass the privacy_report.json written "
                "next to the synthetic table"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"privacy report {source} is not readable JSON ({exc})") from None
    sites = report.get("sites") if isinstance(report, dict) else None
    if not isinstance(sites, list) or not sites:
        raise EvaluationError(
            f"privacy report {source} has no 'sites' list; pass the privacy_report.json "
            "written by `fedsynth server` or `fedsynth simulate`"
        )
    out: list[dict[str, Any]] = []
    for i, site in enumerate(sites):
        ok = isinstance(site, dict) and all(
            isinstance(site.get(k), int | float) and not isinstance(site.get(k), bool)
            for k in ("epsilon", "delta")
        )
        if not ok:
            raise EvaluationError(
                f"privacy report {source}: sites[{i}] needs numeric 'epsilon' and 'delta'; "
                "regenerate the report with the current fedsynth version"
            )
        out.append(
            {
                "site": str(site.get("site", f"site-{i}")),
                "epsilon": float(site["epsilon"]),
                "delta": float(site["delta"]),
                "accountant": str(site.get("accountant", "unknown")),
            }
        )
    return out


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to JSON types; NaN and inf become ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj
