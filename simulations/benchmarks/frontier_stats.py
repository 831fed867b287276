"""Seed statistics of the frontier: means with standard errors and paired differences.

At ε = 1 one seed of TSTR AUC scatters by about 0.04–0.05 on the benchmark
tables, more than the 0.02 tolerance of the acceptance checks, so a single
seed cannot tell two placements apart. This module pools the cells of one or
several frontier runs (each run's ``cells.csv``; runs over other seeds of the
same grid add up) and reports, per table and ε:

* the mean TSTR AUC of every placement with its standard error over seeds;
* seed-paired differences (same seed, hence the same split and holdout) of
  each federated placement against the pooled-DP curator, of ``distributed``
  against ``local`` and of ``local`` against the best single site: their mean,
  standard error and an approximate 95 % interval (mean ± 1.96 SE; with few seeds a
  t quantile would be wider, so the interval is optimistic there).

Run: ``python -m simulations.benchmarks.frontier_stats RUN_DIR [RUN_DIR ...]``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shared.errors import ConfigError

#: (placement, reference) pairs compared seed by seed; pooled-DP cells have 0 sites.
PAIRS = (
    ("distributed", "pooled-dp"),
    ("local", "pooled-dp"),
    ("single-best", "pooled-dp"),
    ("distributed", "local"),
    ("local", "single-best"),
)


def load_cells(runs: Sequence[Path]) -> pd.DataFrame:
    """Every cell of the given frontier runs; a cell repeated across runs is kept once.

    Raises
    ------
    ConfigError
        If a run folder holds no ``cells.csv``.
    """
    frames = []
    for run in runs:
        path = Path(run) / "cells.csv"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: pass folders written by frontier.py --out")
        frames.append(pd.read_csv(path))
    cells = pd.concat(frames, ignore_index=True)
    cells["eps"] = cells["epsilon"].map(lambda e: math.inf if pd.isna(e) else float(e))
    keys = ["table", "family", "placement", "eps", "sites", "seed"]
    return cells.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def _se(values: pd.Series) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else math.nan


def placement_means(cells: pd.DataFrame, metric: str = "auc_gb") -> pd.DataFrame:
    """Mean, standard error and seed count of ``metric`` per (table, family, placement, ε, sites)."""
    keys = ["table", "family", "placement", "eps", "sites"]
    grouped = cells.dropna(subset=[metric]).groupby(keys, sort=False)[metric]
    out = grouped.agg(mean="mean", se=_se, seeds="count").reset_index()
    return out


def paired_differences(cells: pd.DataFrame, *, sites: int, metric: str = "auc_gb") -> pd.DataFrame:
    """Per (table, family, ε) and pair of :data:`PAIRS`: placement minus reference, seed-paired.

    Federated placements are taken at ``sites`` sites. Only seeds where both
    cells exist are paired. Columns: ``mean``, ``se``,
    ``low``/``high`` (mean ∓ 1.96 SE) and ``seeds``.
    """
    rows = []
    keys = ["table", "family", "eps", "seed"]

    def arm(place: str) -> pd.DataFrame:
        k = 0 if place == "pooled-dp" else sites
        return cells[(cells.placement == place) & (cells.sites == k)][[*keys, metric]]

    for place, reference in PAIRS:
        pairs = arm(place).merge(arm(reference), on=keys, suffixes=("", "_ref")).dropna()
        pairs["diff"] = pairs[metric] - pairs[f"{metric}_ref"]
        for (table, family, eps), group in pairs.groupby(["table", "family", "eps"], sort=False):
            d = group["diff"]
            mean, se = float(d.mean()), _se(d)
            rows.append(
                {
                    "table": table,
                    "family": family,
                    "eps": eps,
                    "placement": place,
                    "minus": reference,
                    "mean": mean,
                    "se": se,
                    "low": mean - 1.96 * se,
                    "high": mean + 1.96 * se,
                    "seeds": len(d),
                }
            )
    return pd.DataFrame(rows)


def report(cells: pd.DataFrame, *, sites: int = 5) -> str:
    """The printed text: placement means ± SE, then the paired differences."""
    means = placement_means(cells)
    means["auc_gb"] = [
        f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"
        for m, s in zip(means["mean"], means["se"], strict=True)
    ]
    diffs = paired_differences(cells, sites=sites)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        text = "TSTR AUC (gradient boosting), mean ± standard error over seeds\n"
        text += means.drop(columns=["mean", "se"]).to_string(index=False)
        if not diffs.empty:
            text += f"\n\nseed-paired differences, placement minus reference ({sites} sites)\n"
            text += diffs.round(3).to_string(index=False)
    return text


def main(argv: list[str] | None = None) -> int:
    """Print the seed statistics of one or several frontier runs."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="folders written by frontier.py --out")
    p.add_argument("--sites", type=int, default=5, help="site count of the paired comparison")
    args = p.parse_args(argv)
    print(report(load_cells(args.runs), sites=args.sites))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
