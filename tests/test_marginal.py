"""The ``dp-marginal`` family: sensitivity, budget split, structure, sampling, placements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.cli import main
from shared import dp_bayesnet as bn
from shared import dp_marginals as dm
from shared.accounting import calibrate_noise, epsilon_of
from shared.cohort import generate_cohort
from shared.config import ModelSettings
from shared.errors import ConfigError, ModelError
from shared.manifest import load_model, save_model
from shared.models import build_generator
from shared.models import marginal_columns as mc
from shared.models.marginal import MarginalGenerator
from shared.models.release import stage_noise_multipliers
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.placement_release import (
    distributed_total,
    fit_placement,
    local_total,
    release_sigma,
)

SETTINGS = ModelSettings(generator="dp-marginal")


def _family(schema: Schema, **kw: Any) -> MarginalGenerator:
    fam = build_generator(schema, ModelSettings(generator="dp-marginal", **kw))
    assert isinstance(fam, MarginalGenerator)
    return fam


@pytest.fixture(scope="module")
def cohort_rows() -> pd.DataFrame:
    return generate_cohort(3000, seed=3)


@pytest.fixture(scope="module")
def fitted(cohort: Schema, cohort_rows: pd.DataFrame) -> MarginalGenerator:
    fam = _family(cohort)
    fit_placement(fam, "pooled", [fam.encode(cohort_rows)], epsilon=None, delta=1e-5, seed=0)
    return fam


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), stage=st.sampled_from([0, 1, 2]))
def test_one_row_moves_the_release_by_exactly_its_sensitivity(
    cohort: Schema, seed: int, n: int, stage: int
) -> None:
    fam = _family(cohort)
    rows = fam.sample_encoded(n + 1, torch.Generator().manual_seed(seed)).numpy()
    _fit_until(fam, rows, stage)  # some bins and network: Δ must not depend on which
    # The grid histograms count a numeric value only when present: force presence so
    # the row touches every part (a missing value moves the release by less).
    for span in (s for s in fam.transformer.spans if s.kind == "missing"):
        rows[-1, span.start : span.stop] = [1.0, 0.0]
    change = fam.statistics(rows, stage) - fam.statistics(rows[:-1], stage)
    assert np.linalg.norm(change) == pytest.approx(fam.release_sensitivity(stage), rel=1e-12)
    assert set(np.unique(change)) <= {0.0, 1.0}
    d = len(cohort.columns)
    expected = (1 + fam.n_binned, d * (d - 1) / 2, d)[stage]
    assert fam.release_sensitivity(stage) ** 2 == pytest.approx(expected)


def _fit_until(fam: MarginalGenerator, rows: np.ndarray, stage: int) -> None:
    """Fit the stages before ``stage`` from the exact statistics of ``rows``."""
    for earlier in range(stage):
        fam.fit_release(fam.statistics(rows, earlier), stage=earlier, noise_std=0.0)


def test_sigma_is_the_gaussian_mechanism_and_the_stages_compose_to_it() -> None:
    sigma = release_sigma(epsilon=1.0, delta=1e-5)
    assert sigma == calibrate_noise(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=1)
    assert 0.99 <= epsilon_of([(sigma, 1.0, 1)], delta=1e-5) <= 1.0
    stages = stage_noise_multipliers(sigma, (0.3, 0.7))
    assert stages == pytest.approx([sigma / 0.3**0.5, sigma / 0.7**0.5])
    # RDP of Gaussians adds as 1/σ²: the two ledger entries spend what one release at σ does.
    both = epsilon_of([(s, 1.0, 1) for s in stages], delta=1e-5)
    assert both == pytest.approx(epsilon_of([(sigma, 1.0, 1)], delta=1e-5), rel=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        stage_noise_multipliers(sigma, (0.3, 0.3))


def _chain_schema() -> Schema:
    cols = [{"name": n, "type": "categorical", "categories": ["a", "b", "c"]} for n in "ABCDE"]
    return Schema.from_dict(
        {"fedsynth_schema_version": 1, "name": "chain", "columns": cols, "roles": {"target": "A"}}
    )


def test_structure_recovers_a_planted_chain_from_clean_counts() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    a = rng.integers(0, 3, n)
    b = np.where(rng.random(n) < 0.8, a, rng.integers(0, 3, n))
    c = np.where(rng.random(n) < 0.8, b, rng.integers(0, 3, n))
    d = np.where(rng.random(n) < 0.8, c, rng.integers(0, 3, n))
    e = rng.integers(0, 3, n)  # independent of everything
    cats = np.array(["a", "b", "c"])
    frame = pd.DataFrame({k: cats[v] for k, v in zip("ABCDE", [a, b, c, d, e], strict=True)})
    fam = _family(_chain_schema())
    _fit_until(fam, fam.encode(frame), 2)
    parents = fam.net.parents.numpy()
    assert fam.net.order.numpy()[0] == 0  # rooted at the target
    for child, neighbour in [(1, 0), (2, 1), (3, 2)]:
        assert neighbour in parents[child].tolist(), (child, parents.tolist())
    assert 4 not in parents[:4].tolist()  # the independent column explains nothing
    info, _, total = dm.pair_information(
        fam.statistics(fam.encode(frame), 1), fam.sizes, noise_std=0.0
    )
    assert total == pytest.approx(n)
    assert info[0, 1] > info[0, 2] > info[0, 3] > 10 * abs(info[0, 4])  # data processing


def test_noise_correction_removes_spurious_information_of_large_tables() -> None:
    rng = np.random.default_rng(1)
    sizes = [8, 8, 2]
    codes = np.stack([rng.integers(0, k, 5000) for k in sizes], axis=1)  # all independent
    exact = dm.pair_tables(codes, sizes)
    noisy = exact + rng.normal(0, 60.0, exact.shape)
    raw, _, _ = dm.pair_information(noisy, sizes, noise_std=0.0)
    fixed, _, _ = dm.pair_information(noisy, sizes, noise_std=60.0)
    assert raw[0, 1] > 0.02  # 64 noisy cells look dependent ...
    assert abs(fixed[0, 1]) < raw[0, 1] / 3  # ... much less so once corrected


def test_samples_keep_schema_dtypes_bounds_and_point_masses(
    cohort: Schema, fitted: MarginalGenerator, cohort_rows: pd.DataFrame
) -> None:
    synth = fitted.sample(1500, seed=1)
    assert list(synth.columns) == cohort.names
    validate_frame(synth, cohort)  # raises on a bad value or bound
    assert str(synth["age"].dtype) == "Int64" and str(synth["bmi"].dtype) == "float64"
    assert synth["age"].between(18, 95).all() and (synth["age"] % 1 == 0).all()
    # Without DP the network keeps a strong pair and the 1-way shares.
    real = cohort_rows.groupby("diabetes")["hba1c"].mean()
    fake = synth.groupby("diabetes")["hba1c"].mean()
    assert fake["yes"] - fake["no"] == pytest.approx(real["yes"] - real["no"], rel=0.25)
    assert (synth["mace"] == "yes").mean() == pytest.approx(
        (cohort_rows["mace"] == "yes").mean(), abs=0.03
    )
    assert synth["bmi"].isna().mean() == pytest.approx(cohort_rows["bmi"].isna().mean(), abs=0.03)


def test_point_mass_at_a_public_bound_comes_back_exactly(small_schema: Schema) -> None:
    rng = np.random.default_rng(2)
    n = 2000
    col = small_schema.columns[2]  # nullable continuous
    values = np.where(rng.random(n) < 0.4, col.minimum, rng.uniform(col.minimum, col.maximum, n))
    frame = pd.DataFrame(
        {
            small_schema.columns[0].name: rng.integers(
                int(small_schema.columns[0].minimum), int(small_schema.columns[0].maximum) + 1, n
            ),
            small_schema.columns[1].name: rng.choice(list(small_schema.columns[1].categories), n),
            col.name: values,
        }
    )
    frame = validate_frame(frame, small_schema)
    fam = _family(small_schema)
    fit_placement(fam, "pooled", [fam.encode(frame)], epsilon=None, delta=1e-5, seed=0)
    synth = fam.sample(2000, seed=0)
    assert (synth[col.name] == col.minimum).mean() == pytest.approx(0.4, abs=0.04)


def test_conditions_and_constraints_go_through_the_base_sampler(
    fitted: MarginalGenerator,
) -> None:
    synth = fitted.sample(300, seed=2, conditions={"mace": "yes", "sex": "female"})
    assert len(synth) == 300
    assert (synth["mace"] == "yes").all() and (synth["sex"] == "female").all()
    with pytest.raises(ConfigError, match="not a category"):
        fitted.sample(10, conditions={"mace": "maybe"})


def test_state_dict_and_model_folder_round_trip(
    cohort: Schema, fitted: MarginalGenerator, tmp_path: Path
) -> None:
    save_model(tmp_path / "model", fitted)
    loaded, manifest = load_model(tmp_path / "model")
    assert manifest["generator"] == "dp-marginal"
    pd.testing.assert_frame_equal(loaded.sample(200, seed=5), fitted.sample(200, seed=5))
    state = fitted.state_dict()
    assert all(not p.requires_grad for p in state.values())
    broken = {k: v.clone() for k, v in state.items()}
    broken["parents"][int(broken["order"][0]), 0] = int(broken["order"][-1])  # a cycle
    with pytest.raises(ModelError, match="damaged"):
        _family(cohort).load_state_dict(broken)
    negative = {k: v.clone() for k, v in state.items()}
    negative["conditional"][0, 0, 0] = -1.0
    with pytest.raises(ModelError, match="damaged"):
        _family(cohort).load_state_dict(negative)


def test_release_family_refuses_dp_sgd_and_bad_releases(fitted: MarginalGenerator) -> None:
    one = Schema.from_dict(
        {
            "fedsynth_schema_version": 1,
            "name": "one",
            "columns": [_chain_schema().to_dict()["columns"][0]],
        }
    )
    with pytest.raises(ConfigError, match="at least two columns"):
        _family(one)
    with pytest.raises(ConfigError, match="not trained with DP-SGD"):
        fitted.private_module()
    with pytest.raises(ModelError, match="expected"):
        fitted.fit_release(np.zeros(3), stage=0, noise_std=1.0)
    with pytest.raises(ModelError, match="stages 0, 1 and 2"):
        fitted.release_length(3)


def test_local_sum_carries_k_times_the_variance_of_the_distributed_sum(
    small_schema: Schema,
) -> None:
    fam = _family(small_schema, marginal_bins=4)
    rows = fam.sample_encoded(90, torch.Generator().manual_seed(0)).numpy()
    sites = [rows[:30], rows[30:60], rows[60:]]
    exact = fam.statistics(rows, 0)
    sigma, k = 2.0, len(sites)
    local, dist = [], []
    for draw in range(25):
        local.append(local_total(fam, sites, stage=0, noise_multiplier=sigma, seed=draw) - exact)
        dist.append(
            distributed_total(fam, sites, stage=0, noise_multiplier=sigma, seed=draw) - exact
        )
    central = (sigma * fam.release_sensitivity(0)) ** 2
    var_local, var_dist = np.var(local), np.var(dist)
    assert var_dist == pytest.approx(central, rel=0.15)
    assert var_local == pytest.approx(k * central, rel=0.15)
    assert var_local / var_dist == pytest.approx(k, rel=0.25)


def test_network_selection_weighs_signal_against_noise_and_orders_parents_first() -> None:
    info = np.array([[1.0, 0.5, 0.4], [0.5, 1.0, 0.1], [0.4, 0.1, 1.0]])
    order, parents = bn.select_network(info, [2, 2, 2], root=0, total=1000, cell_noise_std=0.0)
    assert order.tolist()[0] == 0 and bn.check_network(order, parents)
    assert parents[1].tolist() == [0, -1]
    # Noise of std 10 on 10 rows would fake 2 nats in a 2 × 2 table: every column stands alone.
    assert dm.noise_information(2, 2, noise_std=10.0, total=10) == pytest.approx(2.0)
    order, parents = bn.select_network(info, [2, 2, 2], root=0, total=10, cell_noise_std=10.0)
    assert (parents == -1).all()
    # A large table is chosen when its signal stands out: 16 × 16 cells, one per row of the
    # parent (two codings of one variable, I = log 16), and noise faking ~0.5 nats.
    info = np.array([[1.0, 0.01, 0.01], [0.01, np.log(16), np.log(16)], [0.01, np.log(16), 3.0]])
    fake = dm.noise_information(16, 16, noise_std=5.0, total=1000)
    assert 0.3 < fake < np.log(16) / 2
    _, parents = bn.select_network(info, [2, 16, 16], root=0, total=1000, cell_noise_std=5.0)
    assert 1 in parents[2].tolist() or 2 in parents[1].tolist()


def test_a_target_stays_a_parent_of_every_column_it_informs() -> None:
    # Column 3's best pair of parents is (1, 2); the target 0 tells it a little.
    info = np.eye(4)
    for (i, j), v in {(0, 1): 0.5, (0, 2): 0.4, (0, 3): 0.05, (1, 3): 0.3, (2, 3): 0.3}.items():
        info[i, j] = info[j, i] = v
    plain = bn.select_network(info, [2] * 4, root=0, total=1000, cell_noise_std=0.0)[1]
    tan = bn.select_network(info, [2] * 4, root=0, total=1000, cell_noise_std=0.0, target=True)
    assert sorted(plain[3].tolist()) == [1, 2]
    # Tree-augmented naive Bayes: 0.05 + 0.3 − 0.05 · 0.4 (redundancy of 0 and 2) beats (0, 1).
    assert tan[1][3].tolist() == [0, 2] and bn.check_network(*tan)
    # Noise that would fake 0.08 nats in the (0, 3) table outweighs 0.05: not forced.
    assert dm.noise_information(2, 2, noise_std=200.0, total=1000) == pytest.approx(0.08)
    noisy = bn.select_network(info, [2] * 4, root=0, total=1000, cell_noise_std=200.0, target=True)
    assert 0 not in noisy[1][3].tolist()


def test_structure_tables_merge_adjacent_value_bins_only() -> None:
    schema = Schema.from_dict(
        {
            "fedsynth_schema_version": 1,
            "name": "merge",
            "columns": [
                {"name": "y", "type": "categorical", "categories": ["a", "b", "c"]},
                {"name": "x", "type": "continuous", "min": 0.0, "max": 1.0, "nullable": True},
                {"name": "k", "type": "integer", "min": 0, "max": 3},
            ],
        }
    )
    for bins, merged in [(8, [0, 0, 1, 1, 2, 2, 3, 3, 4]), (5, [0, 0, 1, 1, 2, 3])]:
        fam = _family(schema, marginal_bins=bins)
        maps = mc.structure_maps(fam.columns, 2)
        assert maps[0].tolist() == [0, 1, 2]  # categories keep their own codes
        assert maps[1].tolist() == merged  # value bins pair up; the null code follows
        assert maps[2].tolist() == [0, 1, 2, 3]  # one code per integer value: kept
        assert fam.release_length(1) == dm.release_length([3, merged[-1] + 1, 4])


@pytest.mark.parametrize("command", ["simulate", "server"])
def test_flower_commands_refuse_distributed_noise_without_secure_aggregation(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Shares carrying 1/K of the noise must never reach the server one by one.
    out = tmp_path / "out"
    args = [command, "--generator", "dp-marginal", "--out", str(out)]
    args += ["--noise-placement", "distributed", "--no-secure-aggregation"]
    if command == "server":
        args += ["--schema", str(Path("shared/data/cohort_schema.json").resolve()), "--insecure"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs secure aggregation" in err and "--secure-aggregation" in err
    assert not out.exists()


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-50, 200, allow_nan=False), min_size=1, max_size=40))
def test_norm_sub_is_non_negative_keeps_the_total_and_the_order(values: list[float]) -> None:
    v = np.asarray(values)
    out = bn.norm_sub(v)
    assert (out >= 0).all()
    assert out.sum() == pytest.approx(max(v.sum(), 1.0), rel=1e-9, abs=1e-9)
    kept = np.argsort(v, kind="stable")
    assert (np.diff(out[kept]) >= -1e-9).all()  # a larger noisy count never ends smaller
    if (v >= 0).all() and v.sum() >= 1:
        np.testing.assert_allclose(out, v, atol=1e-9)  # nothing to remove


def test_norm_sub_zeroes_pure_noise_cells_that_clipping_keeps() -> None:
    # One real cell of 100 and 15 cells of noise ±20 that sum to zero.
    noisy = np.array([100.0, *([20.0, -20.0] * 7), 0.0])
    out = bn.norm_sub(noisy)
    assert out.sum() == pytest.approx(100.0)
    assert np.clip(noisy, 0, None).sum() == pytest.approx(240.0)  # clipping: 140 % too much
    # τ solves (100 − τ) + 7 (20 − τ) = 100 with τ < 20: τ = 17.5.
    assert out[0] == pytest.approx(82.5) and out[1] == pytest.approx(2.5) and out[2] == 0.0


def _numeric_schema() -> Schema:
    cols = [
        {"name": "y", "type": "categorical", "categories": ["no", "yes"]},
        {"name": "x", "type": "continuous", "min": 0.0, "max": 100.0},
    ]
    return Schema.from_dict({"fedsynth_schema_version": 1, "name": "num", "columns": cols})


def test_bins_follow_the_data_so_crowded_columns_keep_their_association() -> None:
    # x lives in [10, 30] of public bounds [0, 100]; y depends on x within that range.
    rng = np.random.default_rng(4)
    n = 4000
    x = rng.uniform(10.0, 30.0, n)
    y = np.where(rng.random(n) < (x - 10.0) / 20.0, "yes", "no")
    frame = validate_frame(pd.DataFrame({"y": y, "x": x}), _numeric_schema())
    fam = _family(_numeric_schema())
    fit_placement(fam, "pooled", [fam.encode(frame)], epsilon=None, delta=1e-5, seed=0)
    shares = np.bincount(fam.codes(fam.encode(frame))[:, 1], minlength=8) / n
    assert shares.max() < 0.2  # equal-width bins (12.5 wide) would hold 62 % in one bin
    synth = fam.sample(n, seed=0)
    assert synth["x"].between(9.3, 31.3).mean() > 0.99  # within the data's grid cells
    real_gap = frame.groupby("y")["x"].mean().diff().iloc[-1]
    fake_gap = synth.groupby("y")["x"].mean().diff().iloc[-1]
    assert fake_gap == pytest.approx(real_gap, rel=0.15)


def test_table_margins_of_exact_tables_are_the_columns_shares() -> None:
    rng = np.random.default_rng(5)
    sizes = [2, 3, 4]
    codes = np.stack([rng.integers(0, k, 500) for k in sizes], axis=1)
    parents = np.array([[-1, -1], [0, -1], [0, 1]])
    margins = bn.table_margins(bn.node_tables(codes, sizes, parents), sizes, parents)
    for c, k in enumerate(sizes):
        np.testing.assert_allclose(margins[c], np.bincount(codes[:, c], minlength=k) / 500)


def test_bin_edges_that_do_not_rise_are_a_damaged_model(
    cohort: Schema, fitted: MarginalGenerator
) -> None:
    state = {k: v.clone() for k, v in fitted.state_dict().items()}
    binned = next(i for i, c in enumerate(fitted.columns) if c.binned)
    state["edges"][binned, 2] = state["edges"][binned, 1]
    with pytest.raises(ModelError, match="edges"):
        _family(cohort).load_state_dict(state)
