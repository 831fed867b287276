"""The built-in default data: a simulated cardiology cohort with a known causal model.

Covariates (age, sex, BMI, smoking, diabetes, hypertension, kidney disease,
prior infarction, blood pressure, creatinine, HbA1c, baseline LDL) drive both
the treatment (statin, confounded: older, diabetic and high-LDL patients are
treated more often) and the outcome (LDL at 12 months). The statin lowers LDL
by :data:`TRUE_ATE` mg/dL on average, so a synthetic table can be checked for
whether it keeps the treatment effect. ``mace`` (a binary event) is the default
prediction target.

The table is generated, not shipped, so it is identical on every machine for
the same seed; :data:`SCHEMA_PATH` is its public schema.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from shared.schema import Schema

#: Average treatment effect of the statin on ``ldl_12m`` in mg/dL (structural value).
TRUE_ATE = -38.0
SCHEMA_PATH = Path(str(resources.files("shared") / "data" / "cohort_schema.json"))


def cohort_schema() -> Schema:
    """Return the built-in cohort's public schema."""
    return Schema.load(SCHEMA_PATH)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def generate_cohort(
    n: int = 9000, *, seed: int = 7, potential_outcomes: bool = False
) -> pd.DataFrame:
    """Simulate ``n`` patients.

    Parameters
    ----------
    n : int
        Number of rows.
    seed : int
        Seed of the generator; the same seed gives the same table.
    potential_outcomes : bool
        Also return ``ldl_12m_if_untreated`` and ``ldl_12m_if_treated`` (not
        part of the schema; for checking estimators against the truth).

    Returns
    -------
    pandas.DataFrame
        A table valid against :func:`cohort_schema`.
    """
    rng = np.random.default_rng(seed)
    age = np.clip(np.round(rng.normal(62, 13, n)), 18, 95)
    male = rng.random(n) < 0.52
    bmi = np.clip(rng.normal(28.0 + 0.8 * male, 5.0, n), 15, 60)
    smoke_p = np.stack([np.full(n, 0.5), np.full(n, 0.3), np.full(n, 0.2)], axis=1)
    smoke_p[:, 2] += 0.08 * male - 0.002 * (age - 62)
    smoke_p = np.clip(smoke_p, 0.01, None)
    smoke_p /= smoke_p.sum(axis=1, keepdims=True)
    smoker = (smoke_p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    diabetes = rng.random(n) < _sigmoid(-3.2 + 0.035 * (age - 40) + 0.12 * (bmi - 27))
    hypertension = rng.random(n) < _sigmoid(
        -1.6 + 0.05 * (age - 45) + 0.08 * (bmi - 27) + 0.5 * diabetes
    )
    ckd = rng.random(n) < _sigmoid(-3.5 + 0.04 * (age - 50) + 0.9 * diabetes + 0.6 * hypertension)
    prior_mi = rng.random(n) < _sigmoid(-3.3 + 0.04 * (age - 50) + 0.6 * male + 0.5 * (smoker == 2))
    sbp = np.clip(np.round(rng.normal(125 + 14 * hypertension + 0.25 * (age - 60), 14, n)), 80, 220)
    creat = np.clip(np.exp(rng.normal(np.log(0.85 + 0.15 * male) + 0.7 * ckd, 0.18, n)), 0.3, 8.0)
    hba1c = np.clip(np.where(diabetes, rng.normal(7.6, 1.2, n), rng.normal(5.4, 0.4, n)), 4.0, 14.0)
    ldl0 = np.clip(
        rng.normal(135 + 0.3 * (age - 60) - 8 * male + 6 * (smoker == 2), 32, n), 40, 260
    )

    # Confounded treatment: guideline-driven prescribing.
    logit_t = -1.2 + 0.03 * (age - 60) + 0.025 * (ldl0 - 135) + 0.9 * diabetes + 1.3 * prior_mi
    statin = rng.random(n) < _sigmoid(logit_t)

    # Potential outcomes; the effect is heterogeneous but averages TRUE_ATE
    # (the modifier below is centred on its population mean).
    effect = TRUE_ATE - 0.15 * (ldl0 - 135)
    base = 0.8 * ldl0 + 22 + 0.1 * (age - 60) + 4 * diabetes + rng.normal(0, 12, n)
    y0 = np.clip(base, 20, 300)
    y1 = np.clip(base + effect, 20, 300)
    ldl12 = np.where(statin, y1, y0)

    logit_m = (
        -2.9
        + 0.045 * (age - 60)
        + 0.4 * male
        + 0.6 * diabetes
        + 0.55 * prior_mi
        + 0.5 * ckd
        + 0.012 * (ldl12 - 110)
        + 0.012 * (sbp - 130)
        + 0.35 * (smoker == 2)
    )
    mace = rng.random(n) < _sigmoid(logit_m)

    # Missingness: BMI missing at random (5%); HbA1c mostly unmeasured in non-diabetics.
    bmi = np.where(rng.random(n) < 0.05, np.nan, np.round(bmi, 1))
    hba1c = np.where(rng.random(n) < np.where(diabetes, 0.05, 0.6), np.nan, np.round(hba1c, 1))

    yes_no = np.array(["no", "yes"], dtype=object)
    frame = pd.DataFrame(
        {
            "age": age.astype(np.int64),
            "sex": np.where(male, "male", "female").astype(object),
            "bmi": bmi,
            "smoker": np.array(["never", "former", "current"], dtype=object)[smoker],
            "diabetes": yes_no[diabetes.astype(int)],
            "hypertension": yes_no[hypertension.astype(int)],
            "ckd": yes_no[ckd.astype(int)],
            "prior_mi": yes_no[prior_mi.astype(int)],
            "sbp": sbp.astype(np.int64),
            "creatinine": np.round(creat, 2),
            "hba1c": hba1c,
            "ldl_baseline": np.round(ldl0, 1),
            "statin": yes_no[statin.astype(int)],
            "ldl_12m": np.round(ldl12, 1),
            "mace": yes_no[mace.astype(int)],
        }
    )
    if potential_outcomes:
        frame["ldl_12m_if_untreated"] = y0
        frame["ldl_12m_if_treated"] = y1
    return frame
