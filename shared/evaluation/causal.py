"""Causal validity: does the synthetic table give the same treatment effect?

The average treatment effect (ATE) is estimated on each table with the
augmented inverse-probability-weighted (AIPW, doubly robust) estimator
(Robins, Rotnitzky & Zhao, 1994; Bang & Robins, 2005):

    psi_i = mu1(x_i) - mu0(x_i) + t_i (y_i - mu1(x_i)) / e(x_i)
            - (1 - t_i) (y_i - mu0(x_i)) / (1 - e(x_i)),   ATE = mean(psi)

with a logistic-regression propensity e(x), one outcome model per arm (ridge
regression; logistic regression for a binary outcome), and propensities clipped
to [0.01, 0.99] so a few near-deterministic rows cannot dominate. The 95%
interval is a percentile bootstrap (``scipy.stats.bootstrap``) of the mean of
psi with the nuisance models held fixed; AIPW's orthogonality makes their
estimation error second order (Chernozhukov et al., 2018), which keeps the
bootstrap affordable on large tables.

Covariates are every column except the treatment, the outcome and the
prediction target (a target such as a later adverse event is typically
post-treatment, and adjusting for it would bias the effect). Propensity
agreement compares the distributions of the two tables' fitted propensity
scores with a two-sample KS statistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, ks_2samp
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from shared.evaluation.fidelity import category_codes
from shared.evaluation.inputs import Limits, encode, sub_schema
from shared.schema import Schema

CLIP = (0.01, 0.99)
MIN_ARM_ROWS = 20
PROPENSITY_BINS = 20


def _arrays(
    frame: pd.DataFrame, schema: Schema, covariates: Schema, treatment: str, outcome: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Covariate matrix, 0/1 treatment, outcome (binary outcomes as 0/1), binary flag."""
    t_codes = category_codes(frame[treatment], schema.column(treatment))
    out_col = schema.column(outcome)
    if out_col.is_numeric:
        y = frame[outcome].to_numpy(dtype=np.float64)
    else:
        codes = category_codes(frame[outcome], out_col)
        y = np.where(codes < 2, codes, np.nan).astype(np.float64)
    keep = (t_codes < 2) & ~np.isnan(y)
    x = encode(frame.loc[keep], covariates)
    return x, t_codes[keep].astype(np.float64), y[keep], not out_col.is_numeric


def _arm_predictions(x: np.ndarray, y: np.ndarray, arm: np.ndarray, binary: bool) -> np.ndarray:
    """Predicted outcome for every row from a model fitted on one arm's rows."""
    xa, ya = x[arm], y[arm]
    if binary and len(np.unique(ya)) == 2:
        model = LogisticRegression(max_iter=2000).fit(xa, ya)
        return np.asarray(model.predict_proba(x)[:, 1])
    if binary:  # one outcome class only in this arm: its mean is the best guess
        return np.asarray(DummyRegressor().fit(xa, ya).predict(x))
    return np.asarray(Ridge(alpha=1.0).fit(xa, ya).predict(x))


def aipw(
    frame: pd.DataFrame,
    schema: Schema,
    treatment: str,
    outcome: str,
    covariates: Schema,
    limits: Limits,
    seed: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """AIPW estimate of the ATE on one table, with its bootstrap interval.

    ``covariates`` is the sub-schema of the adjustment columns.

    Returns
    -------
    tuple
        The result (``status`` ``"ok"`` or ``"not_estimable"`` with a reason)
        and the unclipped propensity scores (empty when not estimable).
    """
    x, t, y, binary = _arrays(frame, schema, covariates, treatment, outcome)
    n_treated, n_control = int(t.sum()), int(len(t) - t.sum())
    if x.shape[1] == 0:
        reason = "no covariate columns are left once treatment, outcome and target are removed"
        return {"status": "not_estimable", "reason": reason}, np.array([])
    if min(n_treated, n_control) < MIN_ARM_ROWS:
        reason = (
            f"{n_treated} treated and {n_control} control row(s) with an observed outcome; "
            f"each arm needs at least {MIN_ARM_ROWS}"
        )
        return {"status": "not_estimable", "reason": reason}, np.array([])
    propensity = LogisticRegression(max_iter=2000).fit(x, t).predict_proba(x)[:, 1]
    e = np.clip(propensity, *CLIP)
    treated = t == 1
    mu1 = _arm_predictions(x, y, treated, binary)
    mu0 = _arm_predictions(x, y, ~treated, binary)
    psi = mu1 - mu0 + t * (y - mu1) / e - (1 - t) * (y - mu0) / (1 - e)
    boot = bootstrap(
        (psi,),
        np.mean,
        n_resamples=limits.bootstrap_resamples,
        confidence_level=0.95,
        method="percentile",
        batch=100,
        rng=np.random.default_rng([seed, 41]),
    )
    result = {
        "status": "ok",
        "ate": float(psi.mean()),
        "ci_low": float(boot.confidence_interval.low),
        "ci_high": float(boot.confidence_interval.high),
        "se_bootstrap": float(boot.standard_error),
        "naive_difference": float(y[treated].mean() - y[~treated].mean()),
        "rows": len(t),
        "rows_dropped_missing": len(frame) - len(t),
        "treated_share": float(t.mean()),
        "propensity_clipped_rows": int(np.sum((propensity < CLIP[0]) | (propensity > CLIP[1]))),
        "propensity_histogram": np.histogram(propensity, np.linspace(0, 1, PROPENSITY_BINS + 1))[0]
        / len(t),
    }
    return result, propensity


def causal(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    schema: Schema,
    treatment: str,
    outcome: str,
    *,
    target: str | None,
    limits: Limits,
    seed: int,
) -> dict[str, Any]:
    """ATE on real and synthetic tables, their difference and propensity agreement.

    Parameters
    ----------
    real, synthetic : DataFrame
        Validated tables; the real one is the holdout.
    schema : Schema
        Public schema.
    treatment : str
        Categorical column with two categories: control first, treated second.
    outcome : str
        Numeric column, or binary categorical read as 0/1 for its second category.
    target : str or None
        Prediction target, left out of the covariates (usually post-treatment).
    limits : Limits
        Bootstrap resamples.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``real`` and ``synthetic`` estimates, ``difference`` (synthetic − real),
        ``ci_overlap``, ``synthetic_within_real_ci``, ``propensity_ks`` and the method.
    """
    covariates = sub_schema(schema, {treatment, outcome} | ({target} if target else set()))
    est_real, e_real = aipw(real, schema, treatment, outcome, covariates, limits, seed)
    est_syn, e_syn = aipw(synthetic, schema, treatment, outcome, covariates, limits, seed)
    out: dict[str, Any] = {
        "treatment": treatment,
        "treated_category": schema.column(treatment).categories[1],
        "outcome": outcome,
        "covariates": covariates.names,
        "real": est_real,
        "synthetic": est_syn,
        "method": (
            "AIPW (doubly robust): logistic-regression propensity clipped to "
            f"[{CLIP[0]}, {CLIP[1]}], ridge (logistic for binary) outcome model per arm, "
            f"95% percentile bootstrap of the AIPW scores ({limits.bootstrap_resamples} "
            "resamples, scipy.stats.bootstrap, nuisance models fixed)"
        ),
    }
    if est_real["status"] == "ok" and est_syn["status"] == "ok":
        out["difference"] = est_syn["ate"] - est_real["ate"]
        out["ci_overlap"] = bool(
            est_syn["ci_low"] <= est_real["ci_high"] and est_real["ci_low"] <= est_syn["ci_high"]
        )
        out["synthetic_within_real_ci"] = bool(
            est_real["ci_low"] <= est_syn["ate"] <= est_real["ci_high"]
        )
        out["propensity_ks"] = float(ks_2samp(e_real, e_syn).statistic)
    return out
