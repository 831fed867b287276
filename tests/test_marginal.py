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
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), stage=st.sampled_from([0, 1]))
def test_one_row_moves_the_release_by_exactly_its_sensitivity(
    cohort: Schema, seed: int, n: int, stage: int
) -> None:
    fam = _family(cohort)
    rows = fam.sample_encoded(n + 1, torch.Generator().manual_seed(seed)).numpy()
    if stage == 1:  # some network: the sensitivity must not depend on which
        fam.fit_release(fam.statistics(rows, 0), stage=0, noise_std=0.0)
    # Stage 1's fine histograms count a numeric value only when present: force presence so
    # the row touches every part (a missing value moves the release by less).
    for span in (s for s in fam.transformer.spans if s.kind == "missing"):
        rows[-1, span.start : span.stop] = [1.0, 0.0]
    change = fam.statistics(rows, stage) - fam.statistics(rows[:-1], stage)
    assert np.linalg.norm(change) == pytest.approx(fam.release_sensitivity(stage), rel=1e-12)
    assert set(np.unique(change)) <= {0.0, 1.0}
    d = len(cohort.columns)
    expected = d * (d - 1) / 2 if stage == 0 else d + fam.n_binned
    assert fam.release_sensitivity(stage) ** 2 == pytest.approx(expected)


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
    fam.fit_release(fam.statistics(fam.encode(frame), 0), stage=0, noise_std=0.0)
    parents = fam.net.parents.numpy()
    assert fam.net.order.numpy()[0] == 0  # rooted at the target
    for child, neighbour in [(1, 0), (2, 1), (3, 2)]:
        assert neighbour in parents[child].tolist(), (child, parents.tolist())
    assert 4 not in parents[:4].tolist()  # the independent column explains nothing
    info, _, total = dm.pair_information(
        fam.statistics(fam.encode(frame), 0), fam.sizes, noise_std=0.0
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
    with pytest.raises(ModelError, match="stages 0 and 1"):
        fitted.release_length(2)


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


def test_network_selection_respects_usefulness_and_orders_parents_first() -> None:
    info = np.array([[1.0, 0.5, 0.4], [0.5, 1.0, 0.1], [0.4, 0.1, 1.0]])
    order, parents = bn.select_network(info, [2, 2, 2], root=0, total=1000, cell_noise_std=0.0)
    assert order.tolist()[0] == 0 and bn.check_network(order, parents)
    assert parents[1].tolist() == [0, -1]
    # Too little data per cell for any parent: every column stands alone.
    order, parents = bn.select_network(info, [2, 2, 2], root=0, total=10, cell_noise_std=10.0)
    assert (parents == -1).all()


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
