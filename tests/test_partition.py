"""Splitting a table into simulated sites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.cohort import cohort_schema, generate_cohort
from shared.errors import ConfigError
from simulations.partition import PartitionSpec, partition

SCHEMA = cohort_schema()


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return generate_cohort(3000, seed=9)[SCHEMA.names].reset_index(drop=True)


def positive_share(parts: list[pd.DataFrame]) -> np.ndarray:
    return np.array([(p["mace"] == "yes").mean() for p in parts])


def test_iid_gives_equal_disjoint_sites_covering_every_row(table: pd.DataFrame) -> None:
    parts = partition(table, SCHEMA, PartitionSpec.parse("iid"), 4, seed=0)

    assert [len(p) for p in parts] == [750, 750, 750, 750]
    rows = pd.concat(parts).sort_values(SCHEMA.names).reset_index(drop=True)
    assert rows.equals(table.sort_values(SCHEMA.names).reset_index(drop=True))


def test_same_seed_same_split(table: pd.DataFrame) -> None:
    a = partition(table, SCHEMA, PartitionSpec.parse("dirichlet:0.5"), 3, seed=4)
    b = partition(table, SCHEMA, PartitionSpec.parse("dirichlet:0.5"), 3, seed=4)
    assert all(x.equals(y) for x, y in zip(a, b, strict=True))


def test_small_alpha_skews_labels_more_than_large_alpha(table: pd.DataFrame) -> None:
    skewed = partition(table, SCHEMA, PartitionSpec.parse("dirichlet:0.1"), 3, seed=1)
    mild = partition(table, SCHEMA, PartitionSpec.parse("dirichlet:100"), 3, seed=1)

    assert positive_share(skewed).std() > 3 * positive_share(mild).std()
    assert sum(len(p) for p in skewed) == len(table)
    assert len({len(p) for p in skewed}) == 3  # unequal site sizes


def test_column_partition_gives_one_site_per_category(table: pd.DataFrame) -> None:
    parts = partition(table, SCHEMA, PartitionSpec.parse("column:smoker"), 0)

    assert [p["smoker"].unique().tolist() for p in parts] == [["never"], ["former"], ["current"]]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("dirichlet:-1", "α must be a positive number"),
        ("dirichlet:x", "α must be"),
        ("zipf", "not one of iid"),
        ("column:", "not one of iid"),
    ],
)
def test_bad_specs_are_explained(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PartitionSpec.parse(text)


def test_numeric_column_cannot_define_sites(table: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="must be a categorical schema column"):
        partition(table, SCHEMA, PartitionSpec.parse("column:age"), 0)


def test_too_many_sites_for_the_rows_is_refused(table: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="fewer than 20 rows"):
        partition(table.head(100), SCHEMA, PartitionSpec.parse("iid"), 10)


def test_unequal_gives_iid_sites_of_sizes_proportional_to_1_to_k(table: pd.DataFrame) -> None:
    parts = partition(table, SCHEMA, PartitionSpec.parse("unequal"), 4, seed=0)

    # 3000 rows in shares 1:2:3:4 of 10.
    assert [len(p) for p in parts] == [300, 600, 900, 1200]
    rows = pd.concat(parts).sort_values(SCHEMA.names).reset_index(drop=True)
    assert rows.equals(table.sort_values(SCHEMA.names).reset_index(drop=True))
