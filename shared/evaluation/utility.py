"""Utility: train on synthetic, test on real (TSTR) against train on real (TRTR).

Each model family is trained twice with identical settings, once on the
synthetic table and once on real training rows, and both are scored on the same
real test rows (Esteban, Hyland & Rätsch, 2017, introduced TSTR). Two families
bracket what analysts use: a regularised linear model (logistic regression or
ridge) and histogram gradient boosting. Features are the schema encoding of
every column except the target, so no preprocessing is fitted on either table.

Feature-importance agreement is Spearman's rank correlation between the
permutation importances (Breiman, 2001; ``sklearn.inspection``) of the TSTR and
TRTR models, measured on the same real test rows: do the two models rely on the
same columns?
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr, weightedtau
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from shared.evaluation.fidelity import category_codes
from shared.evaluation.inputs import Limits, encode, sample_rows, sub_schema
from shared.schema import Schema

FAMILIES = ("linear", "gradient_boosting")


def _model(family: str, classify: bool, seed: int) -> Any:
    if family == "linear":
        return LogisticRegression(max_iter=2000) if classify else Ridge(alpha=1.0)
    if classify:
        return HistGradientBoostingClassifier(random_state=seed)
    return HistGradientBoostingRegressor(random_state=seed)


def _pipeline(family: str, classify: bool, features: Schema, seed: int) -> Pipeline:
    # Encoding inside the pipeline lets permutation importance shuffle whole
    # table columns (one-hot spans move together), not single one-hot slots.
    encoder = FunctionTransformer(encode, kw_args={"schema": features})
    return Pipeline([("encode", encoder), ("model", _model(family, classify, seed))])


def _labels(frame: pd.DataFrame, schema: Schema, target: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature frame and label vector, dropping rows whose target is missing."""
    col = schema.column(target)
    if col.is_numeric:
        y = frame[target].to_numpy(dtype=np.float64)
        keep = ~np.isnan(y)
    else:
        codes = category_codes(frame[target], col)
        y = codes
        keep = codes < len(col.categories)
    return frame.loc[keep].reset_index(drop=True), y[keep]


def _scores(model: Pipeline, x: pd.DataFrame, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    if n_classes == 0:
        pred = model.predict(x)
        return {"r2": float(r2_score(y, pred)), "mae": float(mean_absolute_error(y, pred))}
    # Map the model's classes onto the schema's, so a class absent from the
    # training table simply gets probability 0.
    proba = np.zeros((len(x), n_classes))
    proba[:, model.classes_] = model.predict_proba(x)
    pred = model.predict(x)
    present = [c for c in range(n_classes) if 0 < np.sum(y == c) < len(y)]
    if n_classes == 2:
        auc = roc_auc_score(y, proba[:, 1]) if len(present) == 2 else None
        f1 = f1_score(y, pred, pos_label=1, average="binary", zero_division=0)
    else:  # macro one-vs-rest AUC over the classes the test rows contain
        aucs = [roc_auc_score(y == c, proba[:, c]) for c in present]
        auc = float(np.mean(aucs)) if aucs else None
        f1 = f1_score(y, pred, average="macro", zero_division=0)
    return {
        "auc": None if auc is None else float(auc),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1),
    }


def _importance(
    model: Pipeline, x: pd.DataFrame, y: np.ndarray, scoring: str, limits: Limits, seed: int
) -> np.ndarray:
    result = permutation_importance(
        model, x, y, scoring=scoring, n_repeats=limits.importance_repeats, random_state=seed
    )
    return np.asarray(result.importances_mean, dtype=np.float64)


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        # A model that uses no column has no ranking to compare.
        return {"importance_spearman": None, "importance_weighted_tau": None}
    return {
        "importance_spearman": float(spearmanr(a, b).statistic),
        # Weighted Kendall tau stresses the top of the ranking, where the
        # informative columns are; the tail of near-zero importances is noise.
        "importance_weighted_tau": float(weightedtau(a, b).statistic),
    }


def utility(
    train: pd.DataFrame,
    test: pd.DataFrame,
    synthetic: pd.DataFrame,
    schema: Schema,
    target: str,
    limits: Limits,
    seed: int,
) -> dict[str, Any]:
    """Score TSTR and TRTR models of ``target`` on the real test rows.

    Parameters
    ----------
    train : DataFrame
        Real training rows (TRTR).
    test : DataFrame
        Real rows neither model was trained on.
    synthetic : DataFrame
        The synthetic table (TSTR).
    schema : Schema
        Public schema; every column except ``target`` is a feature.
    target : str
        Column to predict: categorical → classification (AUC, accuracy, F1;
        binary F1 treats the second category as positive), numeric →
        regression (R², MAE).
    limits : Limits
        Rows and repeats for permutation importance.
    seed : int
        Seed of every random step.

    Returns
    -------
    dict
        Per model family: ``trtr`` and ``tstr`` scores, permutation importances
        and their agreement (``importance_spearman``, ``importance_weighted_tau``);
        plus ``primary_metric``, ``worst_gap`` (largest TRTR − TSTR drop in the
        primary metric) and ``importance_spearman_mean`` over model families.
    """
    col = schema.column(target)
    classify = not col.is_numeric
    n_classes = len(col.categories) if classify else 0
    features = sub_schema(schema, {target})
    x_tr, y_tr = _labels(train, schema, target)
    x_sy, y_sy = _labels(synthetic, schema, target)
    x_te, y_te = _labels(test, schema, target)
    imp_rows = sample_rows(
        pd.concat([x_te, pd.Series(y_te, name="__y")], axis=1),
        limits.importance_rows,
        np.random.default_rng([seed, 21]),
    )
    x_imp, y_imp = imp_rows.drop(columns="__y"), imp_rows["__y"].to_numpy()
    if not classify:
        scoring = "r2"
    elif n_classes == 2 and len(np.unique(y_imp)) == 2:
        scoring = "roc_auc"
    else:
        scoring = "accuracy"
    primary = "auc" if classify else "r2"
    models: dict[str, Any] = {}
    for family in FAMILIES:
        entry: dict[str, Any] = {}
        importances: dict[str, np.ndarray] = {}
        for mode, x, y in (("trtr", x_tr, y_tr), ("tstr", x_sy, y_sy)):
            if classify and len(np.unique(y)) < 2:
                entry[mode] = {
                    "status": "not_trainable",
                    "reason": (
                        f"the {'real training' if mode == 'trtr' else 'synthetic'} table has "
                        f"{len(np.unique(y))} class(es) of {target!r}; a classifier needs two"
                    ),
                }
                continue
            model = _pipeline(family, classify, features, seed).fit(x[features.names], y)
            entry[mode] = _scores(model, x_te[features.names], y_te, n_classes)
            importances[mode] = _importance(
                model, x_imp[features.names], y_imp, scoring, limits, seed
            )
        entry["model"] = type(_model(family, classify, seed)).__name__
        if len(importances) == 2:
            entry["importance"] = {
                mode: dict(zip(features.names, imp, strict=True))
                for mode, imp in importances.items()
            }
            entry.update(_agreement(importances["trtr"], importances["tstr"]))
        models[family] = entry
    gaps = [
        m["trtr"][primary] - m["tstr"][primary]
        for m in models.values()
        if m["trtr"].get(primary) is not None and m["tstr"].get(primary) is not None
    ]
    rhos = [
        m["importance_spearman"]
        for m in models.values()
        if m.get("importance_spearman") is not None
    ]
    return {
        "task": "classification" if classify else "regression",
        "target": target,
        "positive_class": col.categories[1] if n_classes == 2 else None,
        "rows": {
            "trtr_train": len(x_tr),
            "tstr_train": len(x_sy),
            "test": len(x_te),
            "importance": len(x_imp),
        },
        "models": models,
        "primary_metric": primary,
        "worst_gap": max(gaps) if gaps else None,
        "importance_spearman_mean": float(np.mean(rhos)) if rhos else None,
        "importance_method": (
            f"sklearn.inspection.permutation_importance (scoring {scoring!r}, "
            f"{limits.importance_repeats} repeats) on {len(x_imp)} real test rows; "
            "agreement = scipy.stats.spearmanr (and scipy.stats.weightedtau) of TSTR vs TRTR "
            "importances; noisy when few columns carry signal or the tables are small"
        ),
    }
