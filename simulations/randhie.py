"""RAND Health Insurance Experiment data loaded offline from ``statsmodels``.

The RAND HIE (1974–1982) randomised about 2,000 US families to health plans
with coinsurance rates of 0, 25, 50, 95 or 100 % (some with an individual
deductible) and recorded their use of care. ``statsmodels`` (BSD licence; a
dependency of ``causaldata``, the NHEFS package) ships in its wheel the
person-year extract that Cameron & Trivedi use in *Microeconometrics* (2005,
ch. 20): 20,190 rows, marked "This is in the public domain" in
``statsmodels/datasets/randhie/data.py``. Nothing is downloaded at run time.

The prediction task is the classic "any use" question: does the person see a
doctor at all that year (``any_visit`` = ``mdvis > 0``, 69 % yes)? The visit
count is left out because it determines the target. The three self-rated
health dummies become one categorical column, and ``lncoins`` (ln(coinsurance
+ 1)) becomes the plan's coinsurance rate, a categorical with the five rates.
Rows are person-years, so one person can appear up to five times (55 % of
rows repeat another row exactly); a row-level holdout then shares people
with the training rows, which the exact-match chance baseline accounts for.

The public schema is ``shared/data/randhie_schema.json``, written by hand from
the codebook, not inferred from the rows. It declares public atoms (point
masses, :mod:`shared.schema`) where the codebook's definitions put them:
``lpi`` and ``fmde`` at 0 (``ln(max(1, ·))`` floors; ``fmde`` is 0 for every
individual-deductible plan) and ``physlm`` at 0 and 1 (a dummy; only imputed
values lie between).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from shared.schema import Schema
from shared.tables import validate_frame
from simulations.package_data import packaged_file

SCHEMA_PATH = Path(str(resources.files("shared") / "data" / "randhie_schema.json"))


def randhie_schema() -> Schema:
    """The hand-written public schema of the RAND HIE columns used here."""
    return Schema.load(SCHEMA_PATH)


def randhie_file() -> Path:
    """Path of ``randhie.csv`` inside the installed ``statsmodels`` package."""
    # Located without importing statsmodels (its import pulls in much of scipy).
    return packaged_file(
        "statsmodels",
        "datasets/randhie/randhie.csv",
        missing="RAND HIE needs the 'statsmodels' package (it ships the data offline): "
        "pip install 'statsmodels>=0.14'",
    )


def load_randhie() -> tuple[pd.DataFrame, Schema]:
    """RAND HIE person-years, recoded and validated against the public schema.

    Returns
    -------
    (DataFrame, Schema)
        20,190 rows and the public schema (target role ``any_visit``).
    """
    schema = randhie_schema()
    raw = pd.read_csv(randhie_file())
    # lncoins = ln(coinsurance + 1); rounding recovers the plan's integer rate.
    coins = np.rint(np.expm1(raw["lncoins"].to_numpy())).astype(int)
    health = np.select(
        [raw["hlthp"] == 1, raw["hlthf"] == 1, raw["hlthg"] == 1],
        ["poor", "fair", "good"],
        default="excellent",
    )
    frame = pd.DataFrame(
        {
            "coinsurance": [str(c) for c in coins],
            "idp": np.where(raw["idp"] == 1, "yes", "no"),
            "lpi": raw["lpi"].astype(float),
            "fmde": raw["fmde"].astype(float),
            "physlm": raw["physlm"].astype(float),
            "disea": raw["disea"].astype(float),
            "health": health,
            "any_visit": np.where(raw["mdvis"] > 0, "yes", "no"),
        }
    )
    return validate_frame(frame.astype(object), schema, source=str(randhie_file())), schema
