"""Pairwise dependence between columns: association matrices and mutual information.

One association measure per pair of column kinds, each on a 0–1 (or −1–1)
scale so real and synthetic matrices can be subtracted:

* numeric–numeric: Pearson's r (``scipy.stats.pearsonr``) on rows where both
  are observed;
* categorical–categorical: Cramér's V (``scipy.stats.contingency.association``),
  missing counted as a category;
* numeric–categorical: the correlation ratio η (Fisher), the square root of the
  share of the numeric column's variance explained by the categories. Neither
  scipy nor scikit-learn provides η, so it is computed here from group means.

Mutual information (``sklearn.metrics.mutual_info_score``, in nats) is computed
on discretised columns: categories as they are, numerics cut at the deciles of
the *real* table (clipped to the schema range, so both tables share bins), and
missing as its own bin. A pair whose dependence cannot be measured (a constant
column) scores 0: no variation, no association.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import pearsonr
from scipy.stats.contingency import association, crosstab
from sklearn.metrics import mutual_info_score

from shared.evaluation.fidelity import category_codes
from shared.schema import Column, Schema

MI_BINS = 10


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    both = ~np.isnan(x) & ~np.isnan(y)
    xs, ys = x[both], y[both]
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return 0.0
    return float(pearsonr(xs, ys).statistic)


def _cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    table = crosstab(a, b).count
    if min(table.shape) < 2:
        return 0.0
    return float(association(table, method="cramer"))


def _correlation_ratio(values: np.ndarray, codes: np.ndarray) -> float:
    seen = ~np.isnan(values)
    y, g = values[seen], codes[seen]
    if len(y) < 3:
        return 0.0
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0.0:
        return 0.0
    counts = np.bincount(g)
    sums = np.bincount(g, weights=y)
    used = counts > 0
    means = sums[used] / counts[used]
    between = float(np.sum(counts[used] * (means - y.mean()) ** 2))
    return float(np.sqrt(min(between / total, 1.0)))


def _pair(a: Column, b: Column, va: np.ndarray, vb: np.ndarray) -> float:
    if a.is_numeric and b.is_numeric:
        return _pearson(va, vb)
    if not a.is_numeric and not b.is_numeric:
        return _cramers_v(va, vb)
    num, cat = (va, vb) if a.is_numeric else (vb, va)
    return _correlation_ratio(num, cat)


def _column_values(frame: pd.DataFrame, col: Column) -> np.ndarray:
    if col.is_numeric:
        return frame[col.name].to_numpy(dtype=np.float64)
    return category_codes(frame[col.name], col)


def association_matrix(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Symmetric matrix of pairwise associations (diagonal 1) in schema order."""
    cols = schema.columns
    values = [_column_values(frame, c) for c in cols]
    out = np.eye(len(cols))
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            out[i, j] = out[j, i] = _pair(cols[i], cols[j], values[i], values[j])
    return out


def _diff_summary(real: np.ndarray, syn: np.ndarray, names: list[str]) -> dict[str, Any]:
    iu = np.triu_indices(len(names), k=1)
    diff = np.abs(real - syn)
    pairs = diff[iu]
    if len(pairs) == 0:
        return {"abs_diff_mean": 0.0, "abs_diff_max": 0.0, "worst_pair": None}
    worst = int(np.argmax(pairs))
    return {
        "abs_diff_mean": float(pairs.mean()),
        "abs_diff_max": float(pairs.max()),
        "worst_pair": [names[iu[0][worst]], names[iu[1][worst]]],
    }


def associations(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """Association matrices of both tables and the absolute differences between them.

    Returns
    -------
    dict
        ``columns``, ``real``, ``synthetic`` (matrices as nested lists),
        ``abs_diff_mean`` / ``abs_diff_max`` over the distinct pairs and the
        ``worst_pair``.
    """
    r = association_matrix(real, schema)
    s = association_matrix(synthetic, schema)
    return {
        "columns": schema.names,
        "real": r,
        "synthetic": s,
        **_diff_summary(r, s, schema.names),
        "method": (
            "Pearson r (numeric-numeric, scipy.stats.pearsonr), Cramér's V "
            "(categorical-categorical, scipy.stats.contingency.association), correlation "
            "ratio eta (numeric-categorical); mean/max over distinct column pairs"
        ),
    }


def _bin_codes(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    codes = np.searchsorted(edges, values, side="right")
    return np.where(np.isnan(values), len(edges) + 1, codes)


def discretise(real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """Integer codes of every column of both tables, on bins shared by the two tables."""
    out: dict[str, Any] = {"real": [], "synthetic": []}
    for col in schema.columns:
        if col.is_numeric:
            observed = real[col.name].dropna().to_numpy(dtype=np.float64)
            qs = np.linspace(0, 1, MI_BINS + 1)[1:-1]
            edges = np.unique(np.quantile(observed, qs)) if len(observed) else np.array([])
            edges = np.clip(edges, col.minimum, col.maximum)
            for side, frame in (("real", real), ("synthetic", synthetic)):
                out[side].append(_bin_codes(frame[col.name].to_numpy(dtype=np.float64), edges))
        else:
            out["real"].append(category_codes(real[col.name], col))
            out["synthetic"].append(category_codes(synthetic[col.name], col))
    return out


def _mi_matrix(codes: list[np.ndarray]) -> np.ndarray:
    k = len(codes)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(i, k):
            out[i, j] = out[j, i] = mutual_info_score(codes[i], codes[j])
    return out


def mutual_information(
    real: pd.DataFrame, synthetic: pd.DataFrame, schema: Schema
) -> dict[str, Any]:
    """Pairwise mutual information of both tables on shared bins, and its differences.

    Returns
    -------
    dict
        ``real`` and ``synthetic`` matrices (nats; the diagonal is each column's
        entropy), ``abs_diff_mean`` / ``abs_diff_max`` over distinct pairs and
        the ``worst_pair``.
    """
    codes = discretise(real, synthetic, schema)
    r = _mi_matrix(codes["real"])
    s = _mi_matrix(codes["synthetic"])
    return {
        "columns": schema.names,
        "real": r,
        "synthetic": s,
        **_diff_summary(r, s, schema.names),
        "method": (
            f"sklearn.metrics.mutual_info_score (nats) on discretised columns: numerics in "
            f"{MI_BINS} bins cut at the real table's deciles (clipped to the schema range), "
            "categories as listed, missing as its own bin"
        ),
    }
