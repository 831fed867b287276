"""Distributed DP-SGD: noise shares, integer codec, secure sum, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.accounting import epsilon_of
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.distdp.accounting import (
    distributed_epsilon,
    effective_sigma,
    largest_tolerated_collusion,
    sensitivity,
)
from shared.distdp.encoding import ModularCodec, discrete_gaussian
from shared.distdp.plan import DistributedPlan
from shared.distdp.step import clipped_gradient_sum, secure_sum, site_share
from shared.errors import AccountingError, ConfigError
from shared.models import build_generator
from shared.secagg.errors import QuantisationOverflowError, SecAggAbortedError
from shared.tables import validate_frame

GRID = 2.0**-16


def test_discrete_gaussian_has_mean_zero_and_the_requested_variance() -> None:
    x = discrete_gaussian(12.5, 200_000, np.random.default_rng(0))
    assert abs(x.mean()) < 5 * 12.5 / math.sqrt(200_000)
    assert x.var() == pytest.approx(12.5**2, rel=0.02)
    assert x.dtype == np.int64


def test_codec_round_trips_signed_sums_through_the_ring() -> None:
    codec = ModularCodec(grid=0.5, modulus_bits=16)
    parts = [np.array([-3, 7, -1000]), np.array([1, -9, 200])]
    total = codec.ring.add(codec.wrap(parts[0]), codec.wrap(parts[1]))
    assert codec.decode(total).tolist() == [-1.0, -1.0, -400.0]


def test_codec_refuses_a_sum_near_the_wrap_point() -> None:
    codec = ModularCodec(grid=1.0, modulus_bits=16)
    with pytest.raises(QuantisationOverflowError, match="may have wrapped"):
        codec.decode(codec.wrap(np.array([30_000])))
    with pytest.raises(QuantisationOverflowError, match="coarser grid"):
        codec.check_headroom(bound=20_000.0)


def test_stochastic_rounding_is_unbiased() -> None:
    codec = ModularCodec(grid=1.0)
    x = np.full(100_000, 0.3)
    assert codec.to_integers(x, np.random.default_rng(1)).mean() == pytest.approx(0.3, abs=0.01)


def _linear_sites() -> tuple[torch.nn.Module, torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 6))
    data = torch.randn(12, 6) * 3
    return module, torch.nn.MSELoss(reduction="sum"), [data[:3], data[3:8], data[8:]]


def test_distributed_step_matches_central_step_in_mean_and_variance() -> None:
    """One step over 3 sites vs central DP-SGD on their union, same batch and model."""
    module, crit, sites = _linear_sites()
    sigma, clip, draws = 1.3, 1.0, 1500
    per_site = [clipped_gradient_sum(module, crit, b, clip_norm=clip) for b in sites]
    union = clipped_gradient_sum(module, crit, torch.cat(sites), clip_norm=clip).numpy()
    np.testing.assert_allclose(sum(g.numpy() for g in per_site), union, rtol=1e-5, atol=1e-6)
    codec = ModularCodec(grid=2.0**-10)  # coarse enough that rounding is visible
    rng = np.random.default_rng(2)
    dist = np.empty((draws, union.size))
    for k in range(draws):
        ring = np.zeros(union.size, dtype=np.uint64)
        for g in per_site:
            share = site_share(g, sigma=sigma, clip_norm=clip, noise_sites=3, codec=codec, rng=rng)
            ring = codec.ring.add(ring, share)
        dist[k] = codec.decode(ring)
    central = union + rng.normal(0.0, sigma * clip, (draws, union.size))
    se = np.sqrt((dist.var(0) + central.var(0)) / draws)
    # d = 58 coordinates: a 5-standard-error miss has probability < 1e-4 overall.
    assert np.max(np.abs(dist.mean(0) - central.mean(0)) / se) < 5.0
    assert np.max(np.abs(dist.mean(0) - union) / (sigma * clip / math.sqrt(draws))) < 5.0
    # Variance σ²C² per coordinate (rounding adds < 3γ²/4, here < 1e-6): pooled over
    # 58 × 1500 draws the relative standard error is about 0.5 %.
    assert dist.var(0).mean() == pytest.approx(sigma**2 * clip**2, rel=0.025)
    assert dist.var(0).mean() / central.var(0).mean() == pytest.approx(1.0, abs=0.03)


def test_vae_rows_are_clipped_to_c() -> None:
    family = build_generator(cohort_schema(), ModelSettings(hidden=8, latent=2))
    module = family.private_module()
    data = torch.rand(5, module.enc_hidden.in_features)
    one = [
        clipped_gradient_sum(module, family.criterion(), data[i : i + 1], clip_norm=0.01)
        for i in range(5)
    ]
    assert all(float(g.norm()) <= 0.01 for g in one)
    assert (
        clipped_gradient_sum(module, family.criterion(), data[:0], clip_norm=0.01).abs().sum() == 0
    )


@pytest.mark.parametrize("generator", ["dp-vae", "dp-diffusion", "staged"])
def test_every_distributed_family_gets_rows_clipped_to_c(generator: str) -> None:
    # The per-row gradients are vmapped over the family's own forward pass (the
    # diffusion model's draw once used an in-place scatter that vmap refuses).
    schema = cohort_schema()
    frame = generate_cohort(40, seed=5)
    family = build_generator(schema, ModelSettings(generator=generator))
    module = family.private_module()
    data = torch.from_numpy(family.encode(validate_frame(frame, schema)))
    one = [
        clipped_gradient_sum(module, family.criterion(), data[i : i + 1], clip_norm=0.05)
        for i in range(4)
    ]
    total = clipped_gradient_sum(module, family.criterion(), data, clip_norm=0.05)
    assert all(0 < float(g.norm()) <= 0.05 for g in one)
    assert 0 < float(total.norm()) <= 40 * 0.05
    assert torch.isfinite(total).all()


def test_secure_sum_equals_the_plain_modular_sum() -> None:
    codec = ModularCodec(grid=GRID)
    rng = np.random.default_rng(3)
    shares = {i: codec.wrap(rng.integers(-(10**9), 10**9, 50)) for i in (1, 2, 3)}
    plain = np.zeros(50, dtype=np.uint64)
    for v in shares.values():
        plain = codec.ring.add(plain, v)
    got = secure_sum(shares, codec=codec, threshold=2, min_participants=3)
    np.testing.assert_array_equal(got, codec.decode(plain))


def test_a_dropout_below_the_noise_split_aborts_before_unmasking() -> None:
    codec = ModularCodec(grid=GRID)
    shares = {i: codec.wrap(np.arange(5)) for i in (1, 2, 3, 4)}
    with pytest.raises(SecAggAbortedError, match="too little noise"):
        secure_sum(
            shares, codec=codec, threshold=2, min_participants=4, drop_after_keys=frozenset({2})
        )
    # Noise split over a stated minimum of 3 honest sites: one dropout is tolerated.
    got = secure_sum(
        shares, codec=codec, threshold=2, min_participants=3, drop_after_keys=frozenset({2})
    )
    np.testing.assert_array_equal(got, 3 * np.arange(5) * GRID)


def _eps(colluders: int, sites: int = 5) -> float:
    return distributed_epsilon(
        sigma=1.2,
        sample_rate=0.1,
        steps=200,
        delta=1e-5,
        clip_norm=1.0,
        grid=GRID,
        dim=5000,
        sites=sites,
        colluders=colluders,
    )


def test_epsilon_against_the_server_alone_is_central_with_rounding_slack() -> None:
    multiplier = 1.2 / sensitivity(clip_norm=1.0, grid=GRID, dim=5000)
    assert _eps(0) == pytest.approx(epsilon_of([(multiplier, 0.1, 200)], delta=1e-5))
    assert _eps(0) == pytest.approx(epsilon_of([(1.2, 0.1, 200)], delta=1e-5), rel=0.01)


@settings(max_examples=5, deadline=None)
@given(st.integers(min_value=2, max_value=6), st.data())
def test_epsilon_grows_with_collusion(sites: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=0, max_value=sites - 2))
    assert _eps(t, sites) < _eps(t + 1, sites)
    assert effective_sigma(sigma=1.2, sites=sites, colluders=t) == pytest.approx(
        1.2 * math.sqrt((sites - t) / sites)
    )


def test_no_honest_site_left_is_refused() -> None:
    with pytest.raises(AccountingError, match="at least one honest site"):
        _eps(5, sites=5)
    assert largest_tolerated_collusion(sites=5, threshold=3) == 2


def test_a_grid_too_coarse_for_the_noise_is_refused() -> None:
    with pytest.raises(AccountingError, match="too coarse"):
        distributed_epsilon(
            sigma=1.0,
            sample_rate=0.1,
            steps=10,
            delta=1e-5,
            clip_norm=1.0,
            grid=1.0,
            dim=100,
            sites=5,
        )


def _plan(**kw: object) -> DistributedPlan:
    base: dict[str, object] = {
        "epsilon": 1.0,
        "delta": 1e-5,
        "steps": 100,
        "sample_rate": 0.1,
        "clip_norm": 1.0,
        "learning_rate": 0.01,
        "expected_batch": 700.0,
        "noise_sites": 5,
        "threshold": 3,
    }
    return DistributedPlan(**{**base, **kw})  # type: ignore[arg-type]


def test_distributed_without_secure_aggregation_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs secure aggregation.*Turn secure aggregation on"):
        _plan(secure_aggregation=False)
    with pytest.raises(ConfigError, match="invalid expected_batch, threshold"):
        _plan(expected_batch=0.0, threshold=6)


def test_plan_spends_its_epsilon_at_t0_and_reports_the_tolerated_collusion() -> None:
    plan = _plan()
    assert plan.epsilon_at(dim=5000, colluders=0) == pytest.approx(1.0, abs=0.01)
    assert plan.epsilon_at(dim=5000, colluders=0) <= 1.0
    text = plan.privacy_statement(dim=5000)
    eps0 = plan.epsilon_at(dim=5000, colluders=0)
    assert f"Against the server and outside parties: ε = {eps0:.3f}" in text
    assert "colluding with t = 2 site(s)" in text
    eps2 = plan.epsilon_at(dim=5000, colluders=2)
    assert f"ε = {eps2:.3f}" in text and eps2 > 1.0
    assert "only if secure aggregation holds" in text
    assert "no more than 2 site(s)" in text
    assert "aborted before unmasking" in text


def test_clipped_sum_equals_opacus_dp_optimizer_without_noise() -> None:
    """Same clipped sum as Opacus's central DP-SGD (σ = 0, expected batch 1)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    module, crit, sites = _linear_sites()
    batch = torch.cat(sites)
    ours = clipped_gradient_sum(module, crit, batch, clip_norm=0.7)
    gsm = GradSampleModule(module)
    opt = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=0.7,
        expected_batch_size=1,
    )
    opt.zero_grad()
    torch.nn.MSELoss(reduction="none")(gsm(batch), batch).sum().backward()
    opt.pre_step()  # clips per row, sums, adds (zero) noise, divides by 1
    theirs = torch.cat([p.grad.reshape(-1) for p in gsm.parameters()]).double()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
