"""The cells of the privacy–utility frontier and their metrics (checks: :mod:`.frontier_checks`).

A *cell* is one (table, family, placement, ε, sites, seed). Placements:

* ``local``: FedAvg of local DP-SGD over ``sites`` Dirichlet label-skewed sites;
* ``distributed``: distributed DP-SGD under secure aggregation (``sites`` ≥ 2,
  ε finite, and only for families whose private module holds every weight);
* ``single-best``: each site trains alone at the same ε; the best of them on
  the holdout (an optimistic baseline: the holdout picks it);
* ``pooled-dp``: the trusted curator, DP-SGD on all training rows at ε;
* ``pooled``: the same generator on all training rows without DP;
* ``trtr``: train on the real training rows, test on the holdout.

ε = ``None`` is the "no DP" column. Metrics come from :mod:`shared.evaluation`
only; this module combines them into the frontier's headline numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shared.evaluation.association import associations
from shared.evaluation.fidelity import marginals
from shared.evaluation.inputs import Limits
from shared.evaluation.privacy import privacy
from shared.evaluation.utility import utility
from shared.models.base import GeneratorFamily
from shared.models.release import ReleaseFamily
from shared.schema import Schema

FEDERATED = ("local", "distributed", "single-best")
BASELINES = ("pooled-dp", "pooled", "trtr")
#: Cheap sizes: the frontier evaluates hundreds of tables.
LIMITS = Limits(
    importance_rows=200,
    importance_repeats=1,
    privacy_reference_rows=2000,
    privacy_synthetic_rows=2000,
    mia_synthetic_rows=2000,
)
METRICS = (
    "auc_gb",
    "auc_linear",
    "tv_similarity",
    "association_ratio",
    "dcr_share",
    "exact_match",
    "exact_match_chance",
    "exact_match_excess",
    "exact_match_resplit_var",
)


@dataclass(frozen=True)
class Cell:
    """One point of the grid; ``epsilon`` None means no DP, ``sites`` 0 means pooled."""

    table: str
    family: str
    placement: str
    epsilon: float | None
    sites: int
    seed: int


def supports_distributed(family: GeneratorFamily) -> bool:
    """Whether the distributed loop can train ``family``: its private module holds every weight.

    The distributed loop steps only the private module's parameters; a family
    with weights outside it (a GAN's generator) needs its own loop. A release
    family has its own distributed placement (:mod:`simulations.placement_release`).
    """
    if isinstance(family, ReleaseFamily):
        return True
    private = {id(p) for p in family.private_module().parameters()}
    return private == {id(p) for p in family.module.parameters()}


#: Where the two sweeps of the ``cross`` layout meet: the acceptance point of #4 and #8.
REFERENCE_EPSILON, REFERENCE_SITES = 1.0, 5
LAYOUTS = ("cross", "product")


def on_layout(layout: str, epsilon: float | None, sites: int) -> bool:
    """Whether a federated (ε, sites) point belongs to the grid of ``layout``.

    ``product`` is every ε at every site count. ``cross`` is the ε sweep at the
    reference site count plus the site sweep at the reference ε: the two curves a
    frontier plot draws, crossing at the acceptance point, for about half the cells.
    """
    if layout == "product":
        return True
    if layout == "cross":
        return sites == REFERENCE_SITES or epsilon == REFERENCE_EPSILON
    raise ValueError(f"unknown grid layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def plan_cells(
    *,
    tables: Sequence[str],
    families: Sequence[str],
    epsilons: Sequence[float | None],
    site_counts: Sequence[int],
    seeds: Sequence[int],
    distributed_ok: Callable[[str], bool],
    single_site_counts: Sequence[int] | None = None,
    layout: str = "product",
) -> list[Cell]:
    """Every cell of the grid, baselines included, in run order.

    ``single_site_counts`` limits the single-site baseline (it trains every
    site of the split, so it costs ``sites`` trainings) to these site counts;
    None runs it at every count above one. ``layout`` picks the federated
    (ε, sites) points (:func:`on_layout`); the pooled baselines run at every ε.
    """
    on_layout(layout, None, 0)  # refuse an unknown layout before planning anything
    cells: list[Cell] = []
    for table in tables:
        for seed in seeds:
            cells.append(Cell(table, "-", "trtr", None, 0, seed))
            for fam in families:
                # The no-DP pooled baseline runs even when the grid has no no-DP column.
                cells.append(Cell(table, fam, "pooled", None, 0, seed))
                for eps in epsilons:
                    if eps is not None:
                        cells.append(Cell(table, fam, "pooled-dp", eps, 0, seed))
                    for k in site_counts:
                        if not on_layout(layout, eps, k):
                            continue
                        cells.append(Cell(table, fam, "local", eps, k, seed))
                        if k >= 2 and eps is not None and distributed_ok(fam):
                            cells.append(Cell(table, fam, "distributed", eps, k, seed))
                        if k >= 2 and (single_site_counts is None or k in single_site_counts):
                            cells.append(Cell(table, fam, "single-best", eps, k, seed))
    return cells


def shuffled_copy(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each column permuted independently: keeps every marginal, breaks every association."""
    rng = np.random.default_rng([seed, 97])
    return pd.DataFrame(
        {c: frame[c].to_numpy()[rng.permutation(len(frame))] for c in frame.columns},
        index=frame.index,
    )


def auc_scores(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synth: pd.DataFrame,
    schema: Schema,
    target: str,
    seed: int,
) -> dict[str, float]:
    """TSTR (and TRTR) ROC AUC of gradient boosting and logistic regression on the holdout."""
    models = utility(train, holdout, synth, schema, target, LIMITS, seed)["models"]
    nan = float("nan")
    return {
        "auc_gb": float(models["gradient_boosting"]["tstr"].get("auc", nan)),
        "auc_linear": float(models["linear"]["tstr"].get("auc", nan)),
        "trtr_gb": float(models["gradient_boosting"]["trtr"].get("auc", nan)),
        "trtr_linear": float(models["linear"]["trtr"].get("auc", nan)),
    }


def tv_similarity(real: pd.DataFrame, synth: pd.DataFrame, schema: Schema) -> float:
    """1 − mean per-column distance: TVD for categoricals, KS (the TV of the CDFs' sup) for numerics."""
    cols = marginals(real, synth, schema)["columns"]
    dists = [c["tvd"] if "tvd" in c else c["ks"] for c in cols.values()]
    dists = [d for d in dists if d is not None]
    return 1.0 - float(np.mean(dists)) if dists else float("nan")


def fidelity_privacy(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synth: pd.DataFrame,
    schema: Schema,
    *,
    members: pd.DataFrame,
    shuffled_diff: float,
    privacy_checks: bool,
    seed: int,
) -> dict[str, float]:
    """TV similarity, association ratio, DCR share and exact matches of one synthetic table.

    Fidelity compares ``synth`` with all training rows ``train``; the privacy
    checks compare it with ``members``, the rows its generator was trained on
    (one site's rows for the single-site baseline), against the holdout.

    ``shuffled_diff`` is the mean 2-way association difference between the
    real training rows and their column-shuffled copy; the ratio divides the
    synthetic table's difference by it (0 = associations kept, 1 = as bad as
    independent columns).
    """
    nan = float("nan")
    out = {
        "tv_similarity": tv_similarity(train, synth, schema),
        "association_ratio": associations(train, synth, schema)["abs_diff_mean"] / shuffled_diff
        if shuffled_diff > 0
        else nan,
        "dcr_share": nan,
        "exact_match": nan,
        "exact_match_chance": nan,
        "exact_match_excess": nan,
        "exact_match_resplit_var": nan,
    }
    if privacy_checks:
        priv = privacy(members, holdout, synth, schema, LIMITS, seed)
        em = priv["exact_match"]
        out["dcr_share"] = float(priv["dcr"]["share_closer_to_train"])
        out["exact_match"] = float(em["train_rate_size_matched"])
        out["exact_match_chance"] = float(em["holdout_rate_size_matched"])
        out["exact_match_excess"] = float(em["excess_over_chance"])
        out["exact_match_resplit_var"] = float(em["resplit_sd"]) ** 2
    return out


def summarise(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean of every metric over seeds, one row per (table, family, placement, ε, sites)."""
    frame = pd.DataFrame(rows)
    frame["eps"] = frame["epsilon"].map(lambda e: math.inf if e is None or pd.isna(e) else e)
    keys = ["table", "family", "placement", "eps", "sites"]
    cols = [c for c in (*METRICS, "train_s") if c in frame.columns]
    groups = frame.groupby(keys, sort=False)
    out = groups[cols].mean()
    if "exact_match_excess" in frame.columns:  # seeds that measured it (the SE's n)
        out["exact_match_seeds"] = groups["exact_match_excess"].count()
    return out.reset_index()
