"""The DP quantile encoder's maths: histograms, CDF post-processing, maps, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.accounting import calibrate_noise, epsilon_of
from shared.config import ConfigError, ModelSettings, RunSettings
from shared.dp_quantile import (
    UNIFORM_SHARE,
    HistogramRequest,
    QuantileMap,
    add_histogram_noise,
    calibrate_histogram_noise,
    cdf_from_counts,
    column_histogram,
    histogram_sensitivity,
)
from shared.errors import AccountingError, ModelError


def test_column_histogram_counts_each_value_once_and_skips_missing() -> None:
    # Bins of width 2.5 over [0, 10]; the maximum falls in the last bin.
    x = np.array([0.0, 1.0, 2.5, 4.9, 10.0, np.nan])
    counts = column_histogram(x, minimum=0.0, maximum=10.0, bins=4)
    np.testing.assert_array_equal(counts, [2.0, 2.0, 0.0, 1.0])


def test_sensitivity_is_root_of_numeric_columns() -> None:
    assert histogram_sensitivity(7) == pytest.approx(math.sqrt(7))
    with pytest.raises(ValueError, match="at least one numeric column"):
        histogram_sensitivity(0)


def test_uniform_counts_give_the_uniform_cdf_which_is_min_max_scaling() -> None:
    cdf = cdf_from_counts(np.full(4, 25.0))
    np.testing.assert_allclose(cdf, [0.0, 0.25, 0.5, 0.75, 1.0])
    qmap = QuantileMap("x", 10.0, 20.0, cdf)
    np.testing.assert_allclose(qmap.forward(np.array([10.0, 15.0, 20.0])), [-1.0, 0.0, 1.0])


def test_known_cdf_with_empty_bins_and_uniform_share() -> None:
    # All mass in bin 1 of 4: the fitted CDF jumps there; 1% uniform keeps it increasing.
    cdf = cdf_from_counts(np.array([0.0, 100.0, 0.0, 0.0]))
    s = UNIFORM_SHARE
    expected = (1 - s) * np.array([0, 0, 1, 1, 1]) + s * np.array([0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(cdf, expected)
    assert (np.diff(cdf) > 0).all()


def test_negative_noisy_bins_are_pooled_not_kept() -> None:
    # Cumulative [10, 5, 25, 30] -> isotonic [7.5, 7.5, 25, 30]: no negative bin survives.
    cdf = cdf_from_counts(np.array([10.0, -5.0, 20.0, 5.0]), uniform_share=0.0)
    np.testing.assert_allclose(cdf, [0.0, 0.25, 0.25, 25 / 30, 1.0])


def test_histogram_with_no_positive_mass_falls_back_to_min_max() -> None:
    np.testing.assert_allclose(
        cdf_from_counts(np.array([-3.0, -1.0, 2.0, -4.0])), np.linspace(0, 1, 5)
    )


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.floats(-50, 200, allow_nan=False), min_size=8, max_size=64),
    lo=st.floats(-1e3, 1e3),
    width=st.floats(0.5, 1e3),
)
def test_map_is_monotone_bounded_and_round_trips(
    counts: list[float], lo: float, width: float
) -> None:
    qmap = QuantileMap("x", lo, lo + width, cdf_from_counts(np.array(counts)))
    x = np.sort(np.random.default_rng(0).uniform(lo, lo + width, 200))
    u = qmap.forward(x)
    assert (np.diff(u) >= 0).all() and u.min() >= -1.0 and u.max() <= 1.0
    back = qmap.inverse(u)
    # Piecewise linear and strictly increasing: the inverse is exact up to rounding,
    # in particular within the value's bin of width (max - min) / bins.
    assert np.abs(back - x).max() <= max(1e-6 * width, 1e-9) + width / len(counts) * 1e-3
    # Anything the model outputs lands inside the public bounds.
    wild = qmap.inverse(np.array([-5.0, -1.0, 0.3, 1.0, 7.0]))
    assert wild.min() >= lo and wild.max() <= lo + width
    assert wild[0] == lo and wild[-1] == lo + width


def test_damaged_cdf_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ModelError, match=r"not a strictly increasing CDF.*Restore"):
        QuantileMap("age", 0.0, 1.0, np.array([0.0, 0.6, 0.5, 1.0]))
    with pytest.raises(ModelError, match="'bmi'"):
        QuantileMap("bmi", 0.0, 1.0, np.array([0.0, np.nan, 1.0]))


def test_noise_has_the_stated_scale_and_no_bias() -> None:
    # d = 4 columns: std per bin must be σ_h · √4 = 2 σ_h; test over many draws.
    counts = np.arange(4 * 16, dtype=np.float64).reshape(4, 16)
    rng = np.random.default_rng(1)
    draws = np.stack(
        [add_histogram_noise(counts, noise_multiplier=3.0, rng=rng) for _ in range(2000)]
    )
    noise = draws - counts
    assert noise.std() == pytest.approx(6.0, rel=0.02)
    assert abs(noise.mean()) < 0.05
    # Every draw differs from the raw counts: nothing is sent unnoised.
    assert (np.abs(noise) > 0).all()


def test_histogram_noise_calibration_lands_on_the_total_epsilon() -> None:
    training = (4.7, 0.1, 100)  # a DP-SGD run of ε ≈ 0.9 at δ = 1e-5
    sigma_h = calibrate_histogram_noise(target_epsilon=1.0, delta=1e-5, training=training)
    total = epsilon_of([(sigma_h, 1.0, 1), training], delta=1e-5)
    assert 0.99 <= total <= 1.0
    # Smallest such σ_h: 1% less noise overshoots.
    assert epsilon_of([(sigma_h * 0.99, 1.0, 1), training], delta=1e-5) > 1.0


def test_no_room_for_the_histograms_is_an_accounting_error() -> None:
    training = (1.0, 0.1, 50)  # ε ≈ 5.9 at δ = 1e-5 on its own
    with pytest.raises(AccountingError, match=r"leaves no room.*encoder-budget-fraction"):
        calibrate_histogram_noise(target_epsilon=5.0, delta=1e-5, training=training)


def test_run_settings_split_the_budget_between_encoder_and_dp_sgd() -> None:
    base = {"schema-path": "s.json", "out-dir": "o", "epsilon": 1.0, "rounds": 2, "local-steps": 10}
    plain = RunSettings.from_run_config(base)
    dp = RunSettings.from_run_config(
        {**base, "numeric-encoder": "dp-quantile", "encoder-budget-fraction": 0.2}
    )
    assert dp.fits_encoder and not plain.fits_encoder
    # DP-SGD gets 0.8 ε (more noise); σ_h brings the composition back to ε = 1.
    expected = calibrate_noise(target_epsilon=0.8, delta=1e-5, sample_rate=0.1, steps=20)
    assert dp.noise_multiplier() == pytest.approx(expected)
    history = [(dp.encoder_noise_multiplier(), 1.0, 1), (dp.noise_multiplier(), 0.1, 20)]
    assert 0.99 <= epsilon_of(history, delta=1e-5) <= 1.0
    with pytest.raises(ConfigError, match="numeric-encoder"):
        RunSettings.from_run_config({**base, "numeric-encoder": "quantile"})
    with pytest.raises(ConfigError, match="encoder-budget-fraction"):
        RunSettings.from_run_config({**base, "encoder-budget-fraction": 0.9})


def test_settings_and_request_round_trip_through_flower_configs() -> None:
    model = ModelSettings(numeric_encoder="dp-quantile", encoder_bins=128)
    assert ModelSettings.from_config(model.to_config()) == model
    req = HistogramRequest(noise_multiplier=9.5, bins=64, schema_fingerprint="abc")
    assert HistogramRequest.from_config(req.to_config()) == req
    with pytest.raises(ConfigError, match="'bins'"):
        HistogramRequest.from_config({**req.to_config(), "bins": 2})
