"""dp-marginal's grid post-processing: quantile edges, monotone outer bins, support."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import dp_bayesnet as bn
from shared.config import ModelSettings
from shared.models import build_generator
from shared.models import marginal_columns as mc
from shared.models import marginal_grid as mg
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.placement_release import fit_placement


def test_quantile_edges_spread_crowded_values_over_all_bins() -> None:
    bins, width = 4, mc.fine_width(4)
    weights = np.zeros(width)
    weights[10:14] = 25.0  # all the mass in 4 adjacent grid cells
    edges = mg.quantile_edges(weights, bins)
    assert edges.tolist() == [0, 11, 12, 13, width]  # one crowded cell per bin
    uniform = mg.quantile_edges(np.ones(width), bins)
    assert (np.diff(uniform) > 0).all() and np.diff(uniform).max() - np.diff(uniform).min() <= 1
    columns = _family_columns(bins)  # y, then binned x
    equal_width = mc.uniform_edges(columns, bins)
    assert equal_width[0].tolist() == [0] * (bins + 1)
    assert mg.quantile_edges(np.zeros(width), bins).tolist() == equal_width[1].tolist()


def test_outer_bins_pool_noise_and_keep_only_what_stands_out() -> None:
    width = mc.fine_width(2)  # 18 cells: bound, 16 inner, bound
    edges = np.array([0, 5, width])
    noisy = np.zeros(width)
    noisy[0], noisy[-1] = 15.0, 100.0  # bounds: 15 < 2 · 10 is noise, 100 a point mass
    noisy[1:5] = [-10.0, 10.0, 30.0, 50.0]  # rising to the bulk; 10 is not above 1 std
    noisy[5:7] = [100.0, 80.0]
    noisy[7:17] = [30.0, -30.0] * 5  # noise in the wide last bin
    out = mg.shape_tails(noisy, edges, noise_std=10.0)
    np.testing.assert_allclose(out[1:5], [0.0, 0.0, 30.0, 50.0])
    # Isotonic blocks by hand: 100 | 80 | 30 | eight cells of mean 0 (stop) | −30.
    np.testing.assert_allclose(out[5:17], [100.0, 80.0, 30.0, *[0.0] * 9])
    assert out[0] == 0.0 and out[-1] == 100.0
    # norm_sub alone would keep positive noise all the way out to the bound.
    assert bn.norm_sub(noisy)[15] > 0


def test_a_long_faint_tail_is_kept_where_one_faint_cell_is_not() -> None:
    # A block of L cells of mean m is kept when m > σ / √L (σ = 10: 3.2 for L = 10).
    np.testing.assert_allclose(
        mg.monotone_tail(np.array([100.0, *[8.0] * 10]), noise_std=10.0), [100.0, *[8.0] * 10]
    )
    np.testing.assert_allclose(mg.monotone_tail(np.array([100.0, 8.0]), noise_std=10.0), [100, 0])
    # Without noise every positive block is kept.
    np.testing.assert_allclose(
        mg.monotone_tail(np.array([5.0, 1.0, 0.0]), noise_std=0.0), [5, 1, 0]
    )


def test_bins_without_grid_mass_are_not_drawn() -> None:
    columns = _family_columns()
    bins, width = 2, mc.fine_width(2)
    fine = np.zeros((len(columns), width))
    fine[1, 1:6] = 10.0  # x's mass only in its first bin
    edges = mc.uniform_edges(columns, bins)
    allowed = mg.support(columns, fine, edges)
    assert allowed[0].tolist() == [True, True]  # a categorical keeps every code
    assert allowed[1].tolist() == [True, False]
    empty = mg.support(columns, np.zeros_like(fine), edges)
    assert empty[1].tolist() == [True, True]  # no grid mass at all: nothing is known
    sizes, parents = [2, 2], np.array([[-1, -1], [0, -1]])
    noisy = np.array([50.0, 50.0, 30.0, 20.0, 0.0, -5.0])  # y; then (y, x)
    margins = [np.array([0.5, 0.5]), np.array([0.0, 1.0])]  # at odds with the grid
    tables = bn.fit_conditionals(noisy, sizes, parents, margins, noise_std=0.0, support=allowed)
    # y = 0 moves to the allowed bin; y = 1 has no allowed mass left, so it keeps its fit.
    np.testing.assert_allclose(tables[1], [[1.0, 0.0], [0.0, 1.0]])


def _family_columns(bins: int = 2) -> list[mc.Discrete]:
    schema = Schema.from_dict(
        {
            "fedsynth_schema_version": 1,
            "name": "two",
            "columns": [
                {"name": "y", "type": "categorical", "categories": ["no", "yes"]},
                {"name": "x", "type": "continuous", "min": 0.0, "max": 1.0},
            ],
        }
    )
    fam = build_generator(schema, ModelSettings(generator="dp-marginal", marginal_bins=bins))
    return fam.columns  # type: ignore[attr-defined, no-any-return]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-60, 300, allow_nan=False), min_size=26, max_size=26),
    cut=st.tuples(st.integers(1, 8), st.integers(9, 16), st.integers(17, 25)),
)
def test_outer_bins_are_monotone_inner_bins_keep_norm_sub(
    values: list[float], cut: tuple[int, int, int]
) -> None:
    v = np.asarray(values)
    edges = np.array([0, *cut, len(v)])
    out = mg.shape_tails(v, edges, noise_std=10.0)
    assert (out >= 0).all()
    assert (np.diff(out[1 : edges[1]]) >= -1e-9).all()  # rises towards the bulk
    assert (np.diff(out[edges[-2] : len(v) - 1]) <= 1e-9).all()  # falls away from it
    np.testing.assert_allclose(out[edges[1] : edges[-2]], bn.norm_sub(v)[edges[1] : edges[-2]])


def test_dp_fit_keeps_the_spread_of_columns_crowded_in_wide_bounds() -> None:
    names = [f"x{i}" for i in range(6)]
    columns = [{"name": "y", "type": "categorical", "categories": ["no", "yes"]}]
    columns += [{"name": n, "type": "continuous", "min": 0.0, "max": 100.0} for n in names]
    schema = Schema.from_dict({"fedsynth_schema_version": 1, "name": "crowded", "columns": columns})
    rng = np.random.default_rng(7)
    n = 3000
    data = {n_: np.clip(rng.normal(20.0, 2.0, n), 0.0, 100.0) for n_ in names}
    frame = pd.DataFrame({"y": np.where(data["x0"] > 20.0, "yes", "no"), **data})
    frame = validate_frame(frame, schema)
    ratios = []
    for seed in range(2):
        fam = build_generator(schema, ModelSettings(generator="dp-marginal"))
        fit_placement(fam, "pooled-dp", [fam.encode(frame)], epsilon=1.0, delta=1e-5, seed=seed)
        synth = fam.sample(n, seed=seed)
        ratios += [synth[c].std() / frame[c].std() for c in names]
    # Noise left in the empty grid cells of [30, 100] would be drawn as far-out values.
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.15)
