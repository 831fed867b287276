"""The privacy–utility frontier: grid, metrics, acceptance checks and tables (tiny data)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from shared.config import ModelSettings
from shared.errors import ConfigError
from shared.evaluation.association import associations
from shared.models import build_generator
from simulations.benchmarks import frontier_grid as grid
from simulations.benchmarks.frontier import _epsilons
from simulations.benchmarks.frontier_cells import Training, make_split, pick_best, run_cell
from simulations.benchmarks.frontier_checks import acceptance
from simulations.benchmarks.frontier_tables import load_bench_table


def _plan(**kw: object) -> list[grid.Cell]:
    args: dict[str, object] = {
        "tables": ["t"],
        "families": ["a", "b"],
        "epsilons": [1.0, None],
        "site_counts": [1, 5],
        "seeds": [0],
        "distributed_ok": lambda f: f == "a",
    }
    args.update(kw)
    return grid.plan_cells(**args)  # type: ignore[arg-type]


def test_grid_has_each_placement_where_it_applies() -> None:
    cells = _plan()
    kinds = [(c.family, c.placement, c.epsilon, c.sites) for c in cells]
    assert kinds.count(("-", "trtr", None, 0)) == 1
    # Distributed only for the family that supports it, with >= 2 sites and finite ε.
    assert [k for k in kinds if k[1] == "distributed"] == [("a", "distributed", 1.0, 5)]
    assert ("a", "pooled-dp", 1.0, 0) in kinds and ("a", "pooled", None, 0) in kinds
    assert ("b", "single-best", None, 5) in kinds
    assert not [k for k in kinds if k[1] == "single-best" and k[3] == 1]
    # Per family: 2 pooled, 4 local, 2 single-best; plus 1 distributed for "a" and TRTR.
    assert len(cells) == 1 + 2 * 8 + 1


def test_single_site_baseline_can_be_limited_to_some_site_counts() -> None:
    cells = _plan(site_counts=[3, 5, 10], single_site_counts=[5])
    assert {c.sites for c in cells if c.placement == "single-best"} == {5}


def test_cross_layout_is_the_epsilon_sweep_at_5_sites_and_the_site_sweep_at_epsilon_1() -> None:
    eps = [0.5, 1.0, 3.0, None]
    product = _plan(epsilons=eps, site_counts=[1, 3, 5, 10], families=["a"])
    cross = _plan(epsilons=eps, site_counts=[1, 3, 5, 10], families=["a"], layout="cross")
    local = {(c.epsilon, c.sites) for c in cross if c.placement == "local"}
    assert local == {(0.5, 5), (1.0, 5), (3.0, 5), (None, 5), (1.0, 1), (1.0, 3), (1.0, 10)}
    dist = {(c.epsilon, c.sites) for c in cross if c.placement == "distributed"}
    assert dist == {(0.5, 5), (1.0, 5), (3.0, 5), (1.0, 3), (1.0, 10)}
    # The pooled baselines do not depend on the sites: every ε keeps its curator.
    assert {c.epsilon for c in cross if c.placement == "pooled-dp"} == {0.5, 1.0, 3.0}
    assert set(cross) < set(product)
    assert len([c for c in product if c.placement == "local"]) == 16


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown grid layout 'diagonal'"):
        _plan(layout="diagonal")


def test_no_dp_pooled_baseline_runs_without_a_no_dp_column() -> None:
    cells = _plan(epsilons=[1.0], families=["a"])
    assert [c.placement for c in cells if c.epsilon is None] == ["trtr", "pooled"]


def test_distributed_support_needs_every_weight_private() -> None:
    fam = build_generator(load_bench_table("cohort", max_rows=200, seed=0).schema, ModelSettings())
    assert grid.supports_distributed(fam)
    first = next(iter(fam.module.children()))
    fam.private_module = lambda: first  # type: ignore[method-assign]
    assert not grid.supports_distributed(fam)


def test_shuffled_copy_keeps_marginals_and_metrics_hit_their_ends() -> None:
    table = load_bench_table("cohort", max_rows=400, seed=0)
    train, schema = table.frame, table.schema
    shuffled = grid.shuffled_copy(train, seed=1)
    for col in train.columns:
        assert sorted(map(str, train[col])) == sorted(map(str, shuffled[col]))
    diff = associations(train, shuffled, schema)["abs_diff_mean"]
    assert diff > 0.01
    same = grid.fidelity_privacy(
        train, train, train, schema, members=train, shuffled_diff=diff, privacy_checks=True, seed=0
    )
    assert same["tv_similarity"] == pytest.approx(1.0)
    assert same["association_ratio"] == pytest.approx(0.0)
    # A copy of the training rows is caught: all rows match, the chance rate is the holdout's.
    holdout = load_bench_table("cohort", max_rows=400, seed=5).frame
    copy = grid.fidelity_privacy(
        train,
        holdout,
        train,
        schema,
        members=train,
        shuffled_diff=diff,
        privacy_checks=True,
        seed=0,
    )
    assert copy["exact_match"] == 1.0 and copy["exact_match_chance"] < 0.05
    assert copy["dcr_share"] > 0.9
    indep = grid.fidelity_privacy(
        train,
        holdout,
        shuffled,
        schema,
        members=train,
        shuffled_diff=diff,
        privacy_checks=False,
        seed=0,
    )
    assert indep["association_ratio"] == pytest.approx(1.0)
    assert math.isnan(indep["dcr_share"])


def _summary(local: float, dist: float | None) -> pd.DataFrame:
    rows = [
        ("pooled-dp", 1.0, 0, 0.80, 0.95, 0.3, 0.50, 0.0, 0.0),
        ("local", 1.0, 5, local, 0.92, 0.4, 0.52, 0.0, 0.0),
        ("single-best", 1.0, 5, 0.70, 0.90, 0.6, 0.70, 0.0, 0.0),
        ("local", math.inf, 5, 0.9, 0.97, 0.1, 0.60, 0.0, 0.0),  # no DP: not a privacy check
    ]
    if dist is not None:
        rows.append(("distributed", 1.0, 5, dist, 0.85, 0.6, 0.56, 0.01, 0.0))
    cols = ["placement", "eps", "sites", "auc_gb", "tv_similarity", "association_ratio"]
    cols += ["dcr_share", "exact_match", "exact_match_chance"]
    frame = pd.DataFrame(rows, columns=cols)
    frame.insert(0, "family", "f")
    frame.insert(0, "table", "t")
    return frame


def test_acceptance_checks_compare_the_right_cells() -> None:
    checks = {c.name: c.verdict for c in acceptance(_summary(local=0.79, dist=0.81))}
    assert checks["federated (local) >= pooled-DP - 0.02"] == "PASS"
    assert checks["federated (local) > best single site"] == "PASS"
    assert checks["distributed within 0.02 of pooled-DP"] == "PASS"
    assert checks["distributed > local"] == "PASS"
    assert checks["local: TV similarity >= 0.9"] == "PASS"
    assert checks["distributed: TV similarity >= 0.9"] == "FAIL"
    assert checks["local: association ratio <= 0.5"] == "PASS"
    assert checks["distributed: association ratio <= 0.5"] == "FAIL"
    # Distributed's DCR 0.56 fails; the single site's 0.70 (skewed members) and the
    # no-DP cell's 0.60 are not checked.
    assert checks["DCR share <= 0.55 (every ε)"] == "FAIL"
    assert checks["exact match <= chance (every ε)"] == "FAIL"


def test_acceptance_fails_a_weak_federated_cell_and_skips_missing_ones() -> None:
    checks = {c.name: c.verdict for c in acceptance(_summary(local=0.77, dist=None))}
    assert checks["federated (local) >= pooled-DP - 0.02"] == "FAIL"
    assert checks["DCR share <= 0.55 (every ε)"] == "PASS"
    assert checks["distributed > local"] == "n/a"
    assert checks["distributed: TV similarity >= 0.9"] == "n/a"


def test_epsilon_list_parses_no_dp_and_refuses_nonsense() -> None:
    assert _epsilons("0.5, 1,none") == [0.5, 1.0, None]
    with pytest.raises(ConfigError, match="not a positive ε"):
        _epsilons("1,-3")


def test_randhie_ships_offline_with_its_public_schema() -> None:
    table = load_bench_table("randhie", max_rows=30_000, seed=0)
    assert len(table.frame) == 20_190 and table.target == "any_visit"
    # 68.8 % of person-years have at least one MD visit (mdvis > 0 in the source).
    assert (table.frame["any_visit"] == "yes").mean() == pytest.approx(0.6876, abs=1e-4)
    assert set(table.frame["coinsurance"]) == {"0", "25", "50", "95", "100"}
    assert table.privacy_checks


def test_nhefs_gets_a_binary_target_and_no_privacy_attacks() -> None:
    table = load_bench_table("nhefs", max_rows=500, seed=0)
    assert table.target == "qsmk" and len(table.frame) == 500
    assert not table.privacy_checks  # NCHS terms: no re-identification attempts
    with pytest.raises(ConfigError, match="unknown frontier table"):
        load_bench_table("census", max_rows=500, seed=0)


@pytest.mark.slow  # four gradient-boosting fits: ~10 s of CPU
def test_cells_train_and_score_on_tiny_data() -> None:
    table = load_bench_table("cohort", max_rows=400, seed=0)
    split = make_split(table, seed=0, alpha=0.5, site_counts=[2])
    assert len(split.train) + len(split.holdout) == 400
    assert sum(len(p) for p in split.sites[2]) == len(split.train)
    cfg = Training(
        delta=1e-5, steps=2, sample_rate=0.2, rounds=1, local_steps=2, learning_rate=0.01, alpha=0.5
    )
    single = run_cell(grid.Cell("cohort", "dp-vae", "single-best", 1.0, 2, 0), split, cfg)
    assert single["note"].startswith("best site")
    for key in grid.METRICS:
        assert np.isfinite(single[key]), key


def test_best_single_site_skips_a_site_without_an_auc() -> None:
    """A one-class synthetic target has no AUC: NaN first in the list must not win."""
    tables = [pd.DataFrame({"x": [i]}) for i in range(3)]
    best, synth = pick_best(
        [(float("nan"), 0, tables[0]), (0.6, 1, tables[1]), (0.7, 2, tables[2])]
    )
    assert best == 2 and synth is tables[2]
    only_nan, _ = pick_best([(float("nan"), 0, tables[0]), (float("nan"), 1, tables[1])])
    assert only_nan == 0


def test_release_placement_benchmark_prints_noise_and_paired_aucs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from simulations.benchmarks.release_placements import main as placements

    placements(["--table", "cohort", "--rows", "1500", "--draws", "2", "--sites", "3"])
    out = capsys.readouterr().out
    # Stage 0's noise must read σ_sΔ_s = (4.06/√0.1)·√8 = 36.3 in both placements, within
    # 5 % (ε = 1; Δ = √(1 + 7): the row count and the 7 binned columns' grid histograms).
    stds = [
        float(line.split("per cell ")[1].split()[0])
        for line in out.splitlines()
        if "per cell" in line
    ]
    assert len(stds) == 2 and all(abs(s - 36.3) < 1.8 for s in stds)
    assert "distributed − pooled-dp (paired)" in out and "local − pooled-dp (paired)" in out
    with pytest.raises(SystemExit, match="not a release family"):
        placements(["--table", "cohort", "--rows", "1500", "--family", "dp-vae"])
