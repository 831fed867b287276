"""Fidelity of the synthetic table: per-column marginals and a detection test.

Marginals: the two-sample Kolmogorov–Smirnov statistic and the Wasserstein-1
distance (divided by the public range, so 0.1 means "a tenth of the documented
range") for numeric columns; total variation distance for categorical columns
(missing counts as a category). The detection test trains a classifier to tell
real rows from synthetic ones; its cross-validated ROC AUC is 0.5 when the two
tables cannot be told apart and 1.0 when every row gives itself away (the
"classifier two-sample test", Lopez-Paz & Oquab, ICLR 2017).

Associations and mutual information live in :mod:`shared.evaluation.association`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, wasserstein_distance
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

from shared.evaluation.inputs import Limits, encode, sample_rows
from shared.schema import Column, Schema

HIST_BINS = 20
MISSING_LABEL = "(missing)"


def category_codes(values: pd.Series, col: Column) -> np.ndarray:
    """Index of each value in the schema's category list; missing is ``len(categories)``."""
    lookup = {c: i for i, c in enumerate(col.categories)}
    missing = len(col.categories)
    # pd.isna, not "is None": pandas 3 infers its string dtype for text columns
    # rebuilt from arrays (e.g. a shuffled copy), and that dtype stores None as NaN.
    return np.fromiter(
        (missing if pd.isna(v) else lookup[v] for v in values), dtype=np.int64, count=len(values)
    )


def _numeric(real: pd.Series, syn: pd.Series, col: Column) -> dict[str, Any]:
    rv = real.dropna().to_numpy(dtype=np.float64)
    sv = syn.dropna().to_numpy(dtype=np.float64)
    span = col.maximum - col.minimum
    edges = np.linspace(col.minimum, col.maximum, HIST_BINS + 1)
    entry: dict[str, Any] = {
        "kind": col.kind,
        "missing_real": float(real.isna().mean()),
        "missing_synthetic": float(syn.isna().mean()),
        # Shares of all rows (missing included), so bars and the missing share add to 1.
        "plot": {
            "edges": edges,
            "real": np.histogram(rv, edges)[0] / max(len(real), 1),
            "synthetic": np.histogram(sv, edges)[0] / max(len(syn), 1),
        },
    }
    if len(rv) == 0 or len(sv) == 0:
        # One side has no observed values: the marginal cannot be compared.
        entry.update(ks=None, wasserstein_normalised=None)
    else:
        entry["ks"] = float(ks_2samp(rv, sv).statistic)
        entry["wasserstein_normalised"] = float(wasserstein_distance(rv, sv) / span)
    return entry


def _categorical(real: pd.Series, syn: pd.Series, col: Column) -> dict[str, Any]:
    k = len(col.categories) + 1
    p = np.bincount(category_codes(real, col), minlength=k) / len(real)
    q = np.bincount(category_codes(syn, col), minlength=k) / len(syn)
    labels = [*col.categories, MISSING_LABEL]
    if not col.nullable:
        labels, p, q = labels[:-1], p[:-1], q[:-1]
    return {
        "kind": col.kind,
        "missing_real": float(real.isna().mean()),
        "missing_synthetic": float(syn.isna().mean()),
        # TVD = half the L1 distance between the two probability vectors.
        "tvd": float(0.5 * np.abs(p - q).sum()),
        "plot": {"categories": labels, "real": p, "synthetic": q},
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _max(values: list[float]) -> float | None:
    return float(np.max(values)) if values else None


def marginals(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """Per-column distances between the real and synthetic marginals.

    Parameters
    ----------
    real, synthetic : DataFrame
        Validated tables.
    schema : Schema
        Their public schema (bounds normalise the Wasserstein distance).

    Returns
    -------
    dict
        ``columns`` (per-column KS / Wasserstein or TVD, missing shares, and the
        binned distributions used for the plots) and their means and maxima.
    """
    columns: dict[str, Any] = {}
    for col in schema.columns:
        r, s = real[col.name], synthetic[col.name]
        columns[col.name] = _numeric(r, s, col) if col.is_numeric else _categorical(r, s, col)
    ks = [c["ks"] for c in columns.values() if c.get("ks") is not None]
    wd = [c["wasserstein_normalised"] for c in columns.values() if c.get("ks") is not None]
    tvd = [c["tvd"] for c in columns.values() if "tvd" in c]
    missing = [abs(c["missing_real"] - c["missing_synthetic"]) for c in columns.values()]
    return {
        "columns": columns,
        "ks_mean": _mean(ks),
        "ks_max": _max(ks),
        "wasserstein_normalised_mean": _mean(wd),
        "wasserstein_normalised_max": _max(wd),
        "tvd_mean": _mean(tvd),
        "tvd_max": _max(tvd),
        "missing_rate_abs_diff_max": _max(missing),
        "method": (
            "KS: scipy.stats.ks_2samp on observed values; Wasserstein: "
            "scipy.stats.wasserstein_distance / (schema max - schema min); TVD: half the L1 "
            "distance between category shares, missing counted as a category"
        ),
    }


def detection(
    real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema, limits: Limits, seed: int
) -> dict[str, Any]:
    """Cross-validated AUC of a classifier telling real rows from synthetic rows.

    Equal numbers of rows are drawn from each table (at most
    ``limits.detection_rows``), encoded with the schema transformer, and scored
    by 3-fold stratified cross-validation of a histogram gradient-boosting
    classifier, with identical rows grouped in one fold.

    Returns
    -------
    dict
        ``auc`` (mean over folds), ``auc_folds``, ``rows_per_table`` and the method.
    """
    rng = np.random.default_rng([seed, 11])
    m = min(len(real), len(synthetic), limits.detection_rows)
    rows = pd.concat([sample_rows(real, m, rng), sample_rows(synthetic, m, rng)], ignore_index=True)
    x = encode(rows, schema)
    y = np.repeat([0, 1], m)
    # Identical rows share a fold: split across folds, a real row and its synthetic
    # copy carry opposite labels, and the classifier would score *below* 0.5 by
    # recalling the twin's label rather than learning what separates the tables.
    groups = pd.factorize(pd.util.hash_pandas_object(rows[schema.names], index=False))[0]
    folds = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    aucs = cross_val_score(model, x, y, groups=groups, cv=folds, scoring="roc_auc")
    return {
        "auc": float(np.mean(aucs)),
        "auc_folds": [float(a) for a in aucs],
        "rows_per_table": m,
        "method": (
            "sklearn HistGradientBoostingClassifier (100 iterations) on the schema encoding, "
            "3-fold stratified cross-validation with identical rows kept in one fold, ROC AUC "
            "(0.5 = indistinguishable)"
        ),
    }
