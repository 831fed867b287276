"""Seed statistics of the frontier: pooled runs, means ± SE, seed-paired differences."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from shared.errors import ConfigError
from simulations.benchmarks import frontier_stats as stats


def _cells(rows: list[tuple[str, float | None, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "table": "t",
                "family": "f",
                "placement": p,
                "epsilon": eps,
                "sites": k,
                "seed": s,
                "auc_gb": auc,
            }
            for p, eps, k, s, auc in rows
        ]
    )


def _write(run: Path, frame: pd.DataFrame) -> Path:
    run.mkdir()
    frame.to_csv(run / "cells.csv", index=False)
    return run


def test_runs_over_other_seeds_add_up_and_repeats_count_once(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _cells([("pooled-dp", 1.0, 0, 0, 0.6), ("local", 1.0, 5, 0, 0.5)]))
    b = _write(
        tmp_path / "b",
        _cells([("pooled-dp", 1.0, 0, 1, 0.7), ("pooled-dp", 1.0, 0, 0, 0.6)]),
    )
    cells = stats.load_cells([a, b])
    assert sorted(cells[cells.placement == "pooled-dp"].seed) == [0, 1]
    assert len(cells) == 3
    means = stats.placement_means(cells).set_index("placement")
    assert means.loc["pooled-dp", "mean"] == pytest.approx(0.65)
    # Sample standard deviation of (0.6, 0.7) is 0.0707; SE = that / sqrt(2) = 0.05.
    assert means.loc["pooled-dp", "se"] == pytest.approx(0.05)
    assert math.isnan(means.loc["local", "se"])  # one seed: no standard error


def test_paired_difference_pairs_by_seed_and_skips_unpaired_seeds() -> None:
    cells = _cells(
        [
            ("pooled-dp", 1.0, 0, 0, 0.60),
            ("pooled-dp", 1.0, 0, 1, 0.70),
            ("distributed", 1.0, 5, 0, 0.62),
            ("distributed", 1.0, 5, 1, 0.66),
            ("distributed", 1.0, 5, 2, 0.99),  # no pooled-DP cell for seed 2
            ("distributed", 1.0, 3, 0, 0.10),  # another site count
        ]
    )
    cells["eps"] = 1.0
    diff = stats.paired_differences(cells, sites=5).set_index("placement").loc["distributed"]
    assert diff["seeds"] == 2
    assert diff["mean"] == pytest.approx(((0.62 - 0.60) + (0.66 - 0.70)) / 2)
    # Differences +0.02 and -0.04: sample sd 0.042426, SE 0.03.
    assert diff["se"] == pytest.approx(0.03)
    assert diff["low"] == pytest.approx(diff["mean"] - 1.96 * 0.03)


def test_report_prints_means_and_differences(tmp_path: Path) -> None:
    run = _write(
        tmp_path / "r",
        _cells(
            [("pooled-dp", 1.0, 0, s, 0.6 + s / 100) for s in range(3)]
            + [("local", 1.0, 5, s, 0.5) for s in range(3)]
        ),
    )
    text = stats.report(stats.load_cells([run]))
    assert "0.610 ± 0.006" in text
    assert "seed-paired differences" in text and "local" in text


def test_missing_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cells\.csv does not exist"):
        stats.load_cells([tmp_path / "nowhere"])
