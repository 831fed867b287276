"""Known-answer tests for :mod:`shared.evaluation` on the simulated cohort.

Four synthetic tables with answers known in advance, each against the same real
training rows (seed 1) and holdout (seed 2), 1,500 rows each:

* the training table itself (identity): perfect fidelity and utility, ATE gap 0;
* the holdout with every column shuffled independently: marginals kept exactly,
  dependence (associations, prediction, treatment effect) destroyed;
* a copy of the training rows: every privacy check fires;
* a fresh draw from the same distribution (seed 3): no privacy signal, and the
  ATE on both tables recovers the cohort's structural effect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from shared.cohort import TRUE_ATE, generate_cohort
from shared.evaluation import Limits, evaluate
from shared.evaluation.privacy import RESPLITS
from shared.schema import Schema
from shared.tables import validate_frame

N = 1500
# Smaller samples than the defaults keep the whole module to a few seconds per table.
FAST = Limits(detection_rows=N, importance_rows=750, importance_repeats=2, bootstrap_resamples=300)


def _table(schema: Schema, seed: int) -> pd.DataFrame:
    return validate_frame(generate_cohort(N, seed=seed), schema)


def _shuffled(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: frame[c].to_numpy()[rng.permutation(len(frame))] for c in frame})


@pytest.fixture(scope="module")
def tables(cohort: Schema) -> dict[str, pd.DataFrame]:
    return {"train": _table(cohort, 1), "holdout": _table(cohort, 2), "fresh": _table(cohort, 3)}


def _run(cohort: Schema, tables: dict[str, pd.DataFrame], real: str, syn: Any) -> dict[str, Any]:
    synthetic = tables[syn] if isinstance(syn, str) else syn
    return evaluate(tables[real], synthetic, cohort, train=tables["train"], limits=FAST)


@pytest.fixture(scope="module")
def identity(cohort: Schema, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return _run(cohort, tables, "train", "train")


@pytest.fixture(scope="module")
def shuffled(cohort: Schema, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return _run(cohort, tables, "holdout", _shuffled(tables["holdout"], 5))


@pytest.fixture(scope="module")
def copied(cohort: Schema, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return _run(cohort, tables, "holdout", tables["train"].copy())


@pytest.fixture(scope="module")
def fresh(cohort: Schema, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return _run(cohort, tables, "holdout", "fresh")


def _verdict(result: dict[str, Any], aspect: str) -> str:
    return next(str(v["verdict"]) for v in result["summary"]["verdicts"] if v["aspect"] == aspect)


# ------------------------------------------------------------------- identity
def test_table_against_itself_has_perfect_fidelity(identity: dict[str, Any]) -> None:
    # Prepare / Execute: the fixture evaluated the training table against itself.
    fid = identity["fidelity"]

    # Assert
    for name, col in fid["marginals"]["columns"].items():
        if "tvd" in col:
            assert col["tvd"] == 0.0, name
        else:
            assert col["ks"] == 0.0 and col["wasserstein_normalised"] == 0.0, name
    assert fid["associations"]["abs_diff_max"] == 0.0
    assert fid["mutual_information"]["abs_diff_max"] == 0.0
    assert fid["detection"]["auc"] == pytest.approx(0.5, abs=0.05)


def test_table_against_itself_gives_tstr_equal_to_trtr(identity: dict[str, Any]) -> None:
    for family, model in identity["utility"]["models"].items():
        assert model["tstr"] == model["trtr"], family
        assert model["importance_spearman"] == pytest.approx(1.0), family
    assert identity["utility"]["worst_gap"] == 0.0


def test_table_against_itself_gives_zero_ate_difference(identity: dict[str, Any]) -> None:
    causal = identity["causal"]

    assert causal["difference"] == 0.0
    assert causal["ci_overlap"] and causal["synthetic_within_real_ci"]
    assert causal["propensity_ks"] == 0.0


# ------------------------------------------------------------------- shuffled columns
def test_shuffling_columns_keeps_marginals(shuffled: dict[str, Any]) -> None:
    marg = shuffled["fidelity"]["marginals"]

    assert marg["ks_max"] == pytest.approx(0.0, abs=1e-12)
    assert marg["tvd_max"] == pytest.approx(0.0, abs=1e-12)
    assert _verdict(shuffled, "fidelity: marginals") == "good"


def test_shuffling_columns_destroys_associations(
    shuffled: dict[str, Any], fresh: dict[str, Any]
) -> None:
    assoc, mi = shuffled["fidelity"]["associations"], shuffled["fidelity"]["mutual_information"]
    syn = np.asarray(assoc["synthetic"])
    off_diagonal = syn[~np.eye(len(syn), dtype=bool)]

    # The strongest real dependence (e.g. HbA1c with diabetes) is gone...
    assert assoc["abs_diff_max"] > 0.5
    assert np.abs(off_diagonal).max() < 0.15
    # ...and the average gap is well above sampling noise (the fresh draw).
    assert assoc["abs_diff_mean"] > 3 * fresh["fidelity"]["associations"]["abs_diff_mean"]
    assert mi["abs_diff_mean"] > 3 * fresh["fidelity"]["mutual_information"]["abs_diff_mean"]
    assert shuffled["fidelity"]["detection"]["auc"] > 0.75
    assert _verdict(shuffled, "fidelity: associations") == "poor"


def test_shuffling_columns_drives_tstr_to_chance(shuffled: dict[str, Any]) -> None:
    for family, model in shuffled["utility"]["models"].items():
        assert model["trtr"]["auc"] > 0.6, family
        assert model["tstr"]["auc"] == pytest.approx(0.5, abs=0.1), family
        assert model["trtr"]["auc"] - model["tstr"]["auc"] > 0.1, family
    assert _verdict(shuffled, "utility: TSTR vs TRTR") == "poor"


def test_shuffling_columns_erases_the_treatment_effect(shuffled: dict[str, Any]) -> None:
    causal = shuffled["causal"]

    assert causal["synthetic"]["ate"] == pytest.approx(0.0, abs=5.0)
    assert not causal["ci_overlap"]
    assert causal["propensity_ks"] > 0.3
    assert _verdict(shuffled, "causal: treatment effect") == "poor"


# ------------------------------------------------------------------- copied training rows
def test_copied_training_rows_fail_every_privacy_check(copied: dict[str, Any]) -> None:
    priv = copied["privacy"]

    assert priv["exact_match"]["train_rate"] == 1.0
    assert priv["exact_match"]["holdout_rate"] < 0.01
    assert priv["exact_match"]["resplit_p_value"] == pytest.approx(1 / (1 + RESPLITS))
    assert priv["dcr"]["share_closer_to_train"] > 0.95
    assert priv["nndr"]["median_to_train"] == 0.0
    assert priv["membership_inference"]["auc"] > 0.9
    for aspect in ("exact copies", "distance to closest record", "membership inference"):
        assert _verdict(copied, f"privacy: {aspect}") == "poor"


# ------------------------------------------------------------------- fresh draw
def test_fresh_draw_shows_no_memorisation(fresh: dict[str, Any]) -> None:
    priv = fresh["privacy"]

    assert priv["exact_match"]["train_rate"] == priv["exact_match"]["holdout_rate"] == 0.0
    assert priv["dcr"]["share_closer_to_train"] == pytest.approx(0.5, abs=0.05)
    assert priv["membership_inference"]["auc"] == pytest.approx(0.5, abs=0.05)
    assert priv["sizes"]["reference_rows_each"] == N
    assert "GAN-Leaks" in priv["membership_inference"]["method"]


def test_fresh_draw_has_good_fidelity_and_utility(fresh: dict[str, Any]) -> None:
    assert fresh["fidelity"]["marginals"]["ks_max"] < 0.1
    assert fresh["fidelity"]["detection"]["auc"] < 0.6
    assert fresh["utility"]["worst_gap"] < 0.05
    assert fresh["utility"]["train_source"].startswith("the real training rows")


def test_aipw_recovers_the_structural_effect(fresh: dict[str, Any]) -> None:
    # The cohort's statin effect is TRUE_ATE by construction; treatment is
    # confounded, so the naive difference in means is far off.
    for side in ("real", "synthetic"):
        est = fresh["causal"][side]
        assert est["ci_low"] < TRUE_ATE < est["ci_high"], side
        assert abs(est["naive_difference"] - TRUE_ATE) > 10, side
    assert fresh["causal"]["ci_overlap"]
    assert "ldl_12m" not in fresh["causal"]["covariates"]
    assert "mace" not in fresh["causal"]["covariates"]  # the target is post-treatment
