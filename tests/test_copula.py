"""The ``dp-copula`` family: scores, sensitivity, correlation recovery, sampling, damage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtr

from shared.cohort import generate_cohort
from shared.config import ModelSettings
from shared.errors import ConfigError, ModelError
from shared.manifest import load_model, save_model
from shared.models import build_generator
from shared.models import copula_latent as cl
from shared.models import copula_math as cm
from shared.models.copula import CopulaGenerator
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.placement_release import fit_placement


def _family(schema: Schema) -> CopulaGenerator:
    fam = build_generator(schema, ModelSettings(generator="dp-copula"))
    assert isinstance(fam, CopulaGenerator)
    return fam


def _fit_until(fam: CopulaGenerator, rows: np.ndarray, stage: int) -> None:
    for earlier in range(stage):
        fam.fit_release(fam.statistics(rows, earlier), stage=earlier, noise_std=0.0)


def _two_column_schema() -> Schema:
    cols = [
        {"name": "x", "type": "continuous", "min": -5, "max": 5},
        {"name": "y", "type": "continuous", "min": -5, "max": 5},
        {"name": "g", "type": "categorical", "categories": ["a", "b"]},
    ]
    return Schema.from_dict({"fedsynth_schema_version": 1, "name": "pair", "columns": cols})


@pytest.fixture(scope="module")
def cohort_rows() -> pd.DataFrame:
    return generate_cohort(3000, seed=3)


@pytest.fixture(scope="module")
def fitted(cohort: Schema, cohort_rows: pd.DataFrame) -> CopulaGenerator:
    fam = _family(cohort)
    fit_placement(fam, "pooled", [fam.encode(cohort_rows)], epsilon=None, delta=1e-5, seed=0)
    return fam


# ------------------------------------------------------------------------- maths
@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1.0)), min_size=2, max_size=12))
def test_scores_are_standardised_under_their_margin(weights: list[float]) -> None:
    p = np.array(weights)
    if np.count_nonzero(p) < 2:
        return
    p = p / p.sum()
    order = np.random.default_rng(len(weights)).permutation(len(p))
    scores, thresholds = cm.margin_scores(p, order)
    assert float(p @ scores) == pytest.approx(0.0, abs=1e-9)
    assert float(p @ scores**2) == pytest.approx(1.0, abs=1e-9)
    assert np.all(thresholds[1:] >= thresholds[:-1])
    # Higher codes in the order score higher (ties only where a code has no mass).
    ranked = scores[order][p[order] > 0]
    assert np.all(np.diff(ranked) > 0)
    # The thresholds cut a standard normal into the margin itself.
    cut = np.diff(np.concatenate([[0.0], ndtr(thresholds), [1.0]]))
    assert cut == pytest.approx(p[order], abs=1e-5)


def test_attenuation_is_known_for_a_fair_coin_and_near_one_for_fine_margins() -> None:
    assert cl.Steps(np.array([0.5, 0.5]), np.arange(2)).attenuation == pytest.approx(
        math.sqrt(2 / math.pi), rel=1e-6
    )
    fine = np.full(200, 1 / 200)
    assert 0.99 < cl.Steps(fine, np.arange(200)).attenuation <= 1.0
    # A nearly constant column is floored, so noise is not amplified without bound.
    assert cl.Steps(np.array([0.999, 0.001]), np.arange(2)).attenuation == cl.MIN_ATTENUATION


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 12),
    scale=st.floats(0.1, 10.0),
    clip=st.floats(0.5, 5.0),
)
def test_one_rows_pair_products_never_exceed_the_sensitivity(
    seed: int, d: int, scale: float, clip: float
) -> None:
    rng = np.random.default_rng(seed)
    scores = [rng.normal(0, scale, 5) for _ in range(d)]
    codes = rng.integers(0, 5, (1, d))
    z = cm.clipped_scores(codes, scores, clip_norm=clip)
    assert np.all(z == np.round(z))  # integers: secure aggregation sums them exactly
    assert np.linalg.norm(z) <= cm.SCORE_SCALE * clip + 1e-9
    assert np.linalg.norm(cm.pair_sums(z)) <= cm.pair_sensitivity(clip) + 1e-6


def test_latent_correlation_recovers_known_correlations_through_coarse_codes() -> None:
    rng = np.random.default_rng(0)
    cov = np.eye(4)
    cov[0, 1] = cov[1, 0] = 0.6
    cov[0, 3] = cov[3, 0] = 0.7
    cov[1, 3] = cov[3, 1] = 0.42
    u = rng.multivariate_normal(np.zeros(4), cov, 200_000)
    # Fair coin, 5 codes, 8 codes (independent of the rest), fair coin: all discrete.
    cuts = [
        np.array([0.0]),
        np.array([-1.0, -0.2, 0.4, 1.1]),
        np.linspace(-1.5, 1.5, 7),
        np.array([0.0]),
    ]
    codes = np.stack([np.searchsorted(c, u[:, i]) for i, c in enumerate(cuts)], axis=1)
    margins = [np.bincount(codes[:, i]) / len(codes) for i in range(4)]
    orders = [np.arange(len(m)) for m in margins]
    scores = [cm.margin_scores(m, o)[0] for m, o in zip(margins, orders, strict=True)]
    z = cm.clipped_scores(codes, scores, clip_norm=100.0)  # no clipping
    steps = [cl.Steps(m, o) for m, o in zip(margins, orders, strict=True)]
    corr = cl.latent_correlation(
        cm.pair_sums(z), rows=len(codes), scale=cm.SCORE_SCALE**2, steps=steps
    )
    assert corr[0, 1] == pytest.approx(0.6, abs=0.02)
    assert corr[0, 3] == pytest.approx(0.7, abs=0.02)
    assert corr[1, 3] == pytest.approx(0.42, abs=0.02)
    assert np.abs(corr[2, [0, 1, 3]]).max() < 0.02
    assert np.allclose(np.diag(corr), 1.0) and np.all(np.linalg.eigvalsh(corr) > 0)
    # Two fair coins: score correlation (2/π)·arcsin(0.7) ≈ 0.49, and the first-order
    # correction c / (a_0 a_3) reads ≈ 0.78; the exact inversion makes the check above hold.
    c03 = float(np.mean(z[:, 0] * z[:, 3])) / cm.SCORE_SCALE**2
    assert c03 / (steps[0].attenuation * steps[3].attenuation) > 0.75


def test_a_constant_column_correlates_with_nothing_and_empty_end_codes_are_never_drawn() -> None:
    constant = cl.Steps(np.array([1.0, 0.0]), np.arange(2))
    other = cl.Steps(np.array([0.5, 0.5]), np.arange(2))
    assert not constant.varies
    assert cl.latent_pair(0.3, constant, other) == 0.0  # any c there is noise
    margin = np.array([0.0, 0.3, 0.7, 0.0])
    _, thresholds = cm.margin_scores(margin, np.arange(4))
    assert thresholds[0] == -np.inf and thresholds[-1] == np.inf
    codes = cm.latent_codes(
        np.eye(1), [thresholds], [np.arange(4)], 200_000, np.random.default_rng(0)
    )
    assert set(np.unique(codes).tolist()) == {1, 2}


def test_a_noisy_matrix_is_repaired_to_a_positive_definite_correlation() -> None:
    bad = np.array([[1.0, 0.99, -0.99], [0.99, 1.0, 0.99], [-0.99, 0.99, 1.0]])
    fixed = cl.repair_correlation(bad)
    assert np.allclose(np.diag(fixed), 1.0) and np.allclose(fixed, fixed.T)
    np.linalg.cholesky(fixed)  # raises if not positive definite


def test_an_atom_at_the_minimum_orders_first_and_a_null_below_everything(
    cohort: Schema,
) -> None:
    fam = _family(cohort)
    edges = fam.cop.edges.numpy()
    for c, e in zip(fam.columns, edges, strict=True):
        order = cm.code_order(c, e)
        values = [int(k) for k in order if k < c.values]
        assert values == sorted(values)  # value codes keep their order
        if c.column.nullable:
            assert int(order[0]) == c.size - 1  # the null code is the lowest
        for j, atom in enumerate(c.column.atoms or []):
            where = int(np.flatnonzero(order == c.values + j)[0])
            if float(atom) <= float(c.column.minimum):
                assert where == (1 if c.column.nullable else 0)
            elif float(atom) >= float(c.column.maximum):
                assert where > max(int(np.flatnonzero(order == c.values - 1)[0]), 0)


# ----------------------------------------------------------------------- family
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), stage=st.sampled_from([0, 1, 2]))
def test_one_row_moves_each_release_by_at_most_its_sensitivity(
    cohort: Schema, seed: int, n: int, stage: int
) -> None:
    fam = _family(cohort)
    rows = fam.sample_encoded(n + 1, torch.Generator().manual_seed(seed)).numpy()
    _fit_until(fam, rows, stage)
    change = fam.statistics(rows, stage) - fam.statistics(rows[:-1], stage)
    assert np.linalg.norm(change) <= fam.release_sensitivity(stage) * (1 + 1e-12)
    assert np.all(fam.statistics(rows, stage) == np.round(fam.statistics(rows, stage)))
    assert len(fam.statistics(rows, stage)) == fam.release_length(stage)
    d, r = len(cohort.columns), len(fam.reordered)
    assert r == 1  # smoker: the cohort's one 3-category column, not marked ordered
    if stage == 1:  # every column counts each row once, a 'mace = yes' row r more times
        positive = fam.codes(rows[-1:])[0, fam.target] == fam._positive()
        assert np.linalg.norm(change) == pytest.approx(math.sqrt(d + r * positive))


def _nominal_schema(*, ordered: bool) -> Schema:
    cols = [
        {"name": "job", "type": "categorical", "categories": list("abcde"), "ordered": ordered},
        {"name": "pay", "type": "continuous", "min": 0, "max": 10},
        {"name": "rich", "type": "categorical", "categories": ["no", "yes"]},
    ]
    doc = {"fedsynth_schema_version": 1, "name": "jobs", "columns": cols}
    return Schema.from_dict({**doc, "roles": {"target": "rich"}})


def _jobs(n: int, seed: int) -> pd.DataFrame:
    """Job 'd' is richest, then 'a', 'e', 'b', 'c' (not the list's order)."""
    rng = np.random.default_rng(seed)
    job = rng.choice(list("abcde"), n)
    level = pd.Series(job).map({"c": 0, "b": 1, "e": 2, "a": 3, "d": 4}).to_numpy()
    pay = np.clip(1 + 2 * level + rng.normal(0, 1, n), 0, 10)
    rich = np.where(rng.random(n) < 0.1 + 0.2 * level, "yes", "no")
    return pd.DataFrame({"job": job, "pay": pay, "rich": rich})


def test_a_nominal_column_is_ordered_by_its_target_share_and_keeps_its_associations() -> None:
    schema = _nominal_schema(ordered=False)
    frame = validate_frame(_jobs(8000, 0), schema)
    fam = _family(schema)
    assert fam.reordered == [0]
    d, r = 3, 1
    rows = fam.encode(frame)
    _fit_until(fam, rows, 1)
    positive = rows[frame["rich"].to_numpy() == "yes"]
    change = fam.statistics(positive, 1) - fam.statistics(positive[:-1], 1)
    assert np.linalg.norm(change) == pytest.approx(fam.release_sensitivity(1))
    assert fam.release_sensitivity(1) == pytest.approx(math.sqrt(d + r))
    fam.fit_release(fam.statistics(rows, 1), stage=1, noise_std=0.0)
    assert fam._orders()[0].tolist() == [2, 1, 4, 0, 3]  # c, b, e, a, d
    fam.fit_release(fam.statistics(rows, 2), stage=2, noise_std=0.0)
    synth = fam.sample(8000, seed=0)
    real = frame.groupby("job")["pay"].mean()
    fake = synth.groupby("job")["pay"].mean()
    assert np.corrcoef(real.to_numpy(), fake.to_numpy())[0, 1] > 0.95
    # Marked ordered, the same column keeps the list's order: no target counts, less fit.
    kept = _family(_nominal_schema(ordered=True))
    assert kept.reordered == [] and kept.release_sensitivity(1) == pytest.approx(math.sqrt(d))


def test_shrunk_share_pulls_rare_codes_to_the_prior() -> None:
    share = cm.shrunk_share(
        np.array([90.0, 1.0, -3.0]), np.array([100.0, 1.0, 2.0]), prior=0.2, noise_std=20.0
    )
    assert share[0] == pytest.approx((90 + 4) / 120)
    assert share[1] == pytest.approx((1 + 4) / 21)  # one row of one: near the prior, not 1
    assert share[2] == pytest.approx(4 / 22)
    assert np.all((share >= 0) & (share <= 1))


def test_exact_fit_keeps_margins_and_pairwise_correlation() -> None:
    schema = _two_column_schema()
    rng = np.random.default_rng(4)
    u = rng.multivariate_normal([0, 0], [[1, 0.7], [0.7, 1]], 6000)
    frame = pd.DataFrame(
        {
            "x": np.clip(u[:, 0], -5, 5),
            "y": np.clip(np.exp(u[:, 1]) - 1.5, -5, 5),  # skewed: a copula, not a normal
            "g": np.where(u[:, 0] + rng.normal(0, 1, 6000) > 0.5, "b", "a"),
        }
    )
    frame = validate_frame(frame, schema)
    fam = _family(schema)
    fit_placement(fam, "pooled", [fam.encode(frame)], epsilon=None, delta=1e-5, seed=0)
    synth = fam.sample(6000, seed=1)
    validate_frame(synth, schema)
    real_rho = frame["x"].corr(frame["y"], method="spearman")
    assert synth["x"].corr(synth["y"], method="spearman") == pytest.approx(real_rho, abs=0.06)
    assert (synth["g"] == "b").mean() == pytest.approx((frame["g"] == "b").mean(), abs=0.03)
    real_gap = frame.groupby("g")["x"].mean().diff().iloc[-1]
    assert synth.groupby("g")["x"].mean().diff().iloc[-1] == pytest.approx(real_gap, rel=0.2)
    assert synth["y"].median() == pytest.approx(frame["y"].median(), abs=0.15)


def test_dp_fit_is_three_charged_stages_and_samples_valid_rows(
    cohort: Schema, cohort_rows: pd.DataFrame
) -> None:
    fam = _family(cohort)
    assert len(fam.release_shares()) == 3 and sum(fam.release_shares()) == pytest.approx(1.0)
    fit_placement(fam, "pooled", [fam.encode(cohort_rows)], epsilon=1.0, delta=1e-5, seed=0)
    synth = fam.sample(2000, seed=0)
    validate_frame(synth, cohort)
    assert synth["bmi"].isna().mean() == pytest.approx(cohort_rows["bmi"].isna().mean(), abs=0.05)
    np.linalg.cholesky(fam.cop.corr.numpy())


def test_conditions_go_through_the_base_sampler(fitted: CopulaGenerator) -> None:
    synth = fitted.sample(300, seed=2, conditions={"mace": "yes", "sex": "female"})
    assert (synth["mace"] == "yes").all() and (synth["sex"] == "female").all()
    with pytest.raises(ConfigError, match="not a category"):
        fitted.sample(10, conditions={"mace": "maybe"})


def test_model_folder_round_trips_and_damage_is_refused(
    cohort: Schema, fitted: CopulaGenerator, tmp_path: Path
) -> None:
    save_model(tmp_path / "model", fitted)
    loaded, manifest = load_model(tmp_path / "model")
    assert manifest["generator"] == "dp-copula"
    pd.testing.assert_frame_equal(loaded.sample(200, seed=5), fitted.sample(200, seed=5))
    state = fitted.state_dict()
    not_pd = {k: v.clone() for k, v in state.items()}
    not_pd["corr"][0, 1] = not_pd["corr"][1, 0] = 5.0
    with pytest.raises(ModelError, match=r"dp-copula model .* is damaged: the correlation"):
        _family(cohort).load_state_dict(not_pd)
    negative = {k: v.clone() for k, v in state.items()}
    negative["margin"][0, 0] = -0.5
    with pytest.raises(ModelError, match="damaged"):
        _family(cohort).load_state_dict(negative)
    repeated = {k: v.clone() for k, v in state.items()}
    repeated["order"][0, :2] = 0  # not a permutation of the column's codes
    with pytest.raises(ModelError, match=r"'age'.s order is not a permutation"):
        _family(cohort).load_state_dict(repeated)
    swapped = {k: v.clone() for k, v in state.items()}
    swapped["order"][0, :2] = swapped["order"][0, :2].flip(0)  # age's bins out of order
    with pytest.raises(ModelError, match="'age' is not in its public order"):
        _family(cohort).load_state_dict(swapped)


def test_bad_stage_release_shape_and_one_column_schema_are_refused(
    fitted: CopulaGenerator,
) -> None:
    with pytest.raises(ModelError, match="stages 0, 1 and 2, not 3"):
        fitted.release_length(3)
    with pytest.raises(ModelError, match="expected"):
        fitted.fit_release(np.zeros(3), stage=2, noise_std=0.0)
    with pytest.raises(ConfigError, match="DP-SGD"):
        fitted.private_module()
    one = Schema.from_dict(
        {
            "fedsynth_schema_version": 1,
            "name": "one",
            "columns": [{"name": "a", "type": "categorical", "categories": ["x", "y"]}],
        }
    )
    with pytest.raises(ConfigError, match="at least two columns"):
        _family(one)
