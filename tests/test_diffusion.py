"""Unit tests for the TabDDPM-style family ``dp-diffusion``: shapes, loss, sampling, DP training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.fused import supports
from client.settings import SiteSettings
from client.site import run_site_round
from client.training import train_dp, train_plain
from shared.cohort import generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.errors import ConfigError
from shared.manifest import load_model, save_model
from shared.models import available_families, build_generator
from shared.models.diffusion import DPDiffusion, TabularDenoiser, cosine_alpha_bar
from shared.schema import Schema
from shared.tables import validate_frame
from tests.e2e import independent_epsilon, simulate_small

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]
CPU = torch.device("cpu")
SETTINGS = ModelSettings(generator="dp-diffusion", diffusion_steps=20)


@pytest.fixture
def family(cohort: Schema) -> DPDiffusion:
    torch.manual_seed(0)
    f = build_generator(cohort, SETTINGS)
    assert isinstance(f, DPDiffusion)
    return f


@pytest.fixture(scope="module")
def rows(cohort: Schema) -> torch.Tensor:
    """1,000 encoded rows of the built-in cohort."""
    raw = generate_cohort(1000, seed=3)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), cohort)
    return torch.from_numpy(build_generator(cohort, SETTINGS).encode(frame))


def _mean_loss(f: DPDiffusion, data: torch.Tensor) -> float:
    """Loss over all rows, averaged over 4 fixed draws of t and noise."""
    crit = f.criterion()
    with torch.no_grad():
        torch.manual_seed(123)
        return float(np.mean([float(crit(f.module(data), data)) for _ in range(4)]))


# ---------------------------------------------------------------------- structure
def test_registered_small_and_linear_only(family: DPDiffusion) -> None:
    # Assert: registry, size comparable to the VAE, every trainable layer nn.Linear
    assert "dp-diffusion" in available_families() and family.name == "dp-diffusion"
    assert isinstance(family.module, TabularDenoiser)
    n_params = sum(p.numel() for p in family.module.parameters())
    assert 3_000 <= n_params <= 20_000
    assert supports(family.private_module())


def test_forward_and_per_row_loss_shapes(family: DPDiffusion, rows: torch.Tensor) -> None:
    # Arrange
    width = family.transformer.width
    crit = family.criterion()
    # Act
    out = family.module(rows[:7])
    crit.reduction = "none"
    per_row = crit(out, rows[:7]).detach()
    crit.reduction = "sum"
    total = crit(out, rows[:7]).detach()
    # Assert: [denoiser | eps | x_t | t], one finite loss per row, sum consistent
    assert out.shape == (7, 3 * width + 1)
    t = out[:, -1]
    assert torch.all((t >= 1) & (t <= 20)) and torch.equal(t, t.round())
    assert per_row.shape == (7,) and torch.isfinite(per_row).all() and (per_row >= 0).all()
    assert float(total) == pytest.approx(float(per_row.sum()), rel=1e-5)


def test_each_rows_loss_depends_on_that_row_only(family: DPDiffusion, rows: torch.Tensor) -> None:
    # Arrange: DP-SGD's per-row clipping needs a row's gradient to ignore the other rows.
    crit = family.criterion()
    crit.reduction = "none"
    batch = rows[:6].clone().requires_grad_(True)
    # Act
    loss = crit(family.module(batch), batch)
    (grad,) = torch.autograd.grad(loss[2], batch)
    # Assert
    others = torch.cat([grad[:2], grad[3:]])
    assert torch.count_nonzero(others) == 0 and torch.count_nonzero(grad[2]) > 0


@given(st.integers(min_value=2, max_value=1000))
@settings(max_examples=30, deadline=None)
def test_cosine_schedule_is_decreasing_from_one(steps: int) -> None:
    # Act
    ab = cosine_alpha_bar(steps)
    # Assert: ᾱ_0 = 1, strictly decreasing, ᾱ_T near 0, every α_t in (0, 1]
    assert ab.shape == (steps + 1,) and float(ab[0]) == 1.0
    assert torch.all(ab[1:] < ab[:-1]) and float(ab[-1]) < 1e-2
    alpha = ab[1:] / ab[:-1]
    assert torch.all(alpha >= 1e-3 - 1e-12) and torch.all(alpha <= 1)


def test_categorical_noising_reaches_uniform(family: DPDiffusion, rows: torch.Tensor) -> None:
    # Arrange: at t = T the multinomial process keeps ᾱ_T ≈ 0 of x₀: near-uniform draws.
    m = family.module
    assert isinstance(m, TabularDenoiser)
    x0 = rows[:1].repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    # Act
    x_t, _ = m.noised(x0, torch.full((4000,), m.steps), gen)
    # Assert: the 3-category "smoker" column is drawn about 1/3 each
    span = next(s for s in family.transformer.spans if s.column == "smoker")
    freq = x_t[:, span.start : span.stop].mean(0)
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.03)
    assert torch.all(x_t[:, span.start : span.stop].sum(1) == 1)


@given(
    t=st.integers(min_value=1, max_value=20),
    x0=st.integers(min_value=0, max_value=2),
    xt=st.integers(min_value=0, max_value=2),
)
@settings(max_examples=40, deadline=None)
def test_multinomial_posterior_is_bayes_rule(cohort: Schema, t: int, x0: int, xt: int) -> None:
    # Arrange: brute force on the 3-category "smoker" span with explicit transition
    # matrices Q_t = α_t I + (1 − α_t)/K and Q̄_{t−1} = ᾱ_{t−1} I + (1 − ᾱ_{t−1})/K.
    f = build_generator(cohort, SETTINGS)
    m = f.module
    assert isinstance(m, TabularDenoiser)
    span = next(s for s in f.transformer.spans if s.column == "smoker")
    k, eye = 3, torch.eye(3, dtype=torch.float64)
    a, ab_prev = float(m.alpha[t]), float(m.alpha_bar[t - 1])
    q_t = a * eye + (1 - a) / k
    q_bar = ab_prev * eye + (1 - ab_prev) / k
    brute = q_t[:, xt] * q_bar[x0, :]
    brute = brute / brute.sum()
    row = torch.zeros(1, m.width)
    row[0, span.start + xt] = 1.0
    x0_row = torch.zeros(1, m.width)
    x0_row[0, span.start + x0] = 1.0
    # Act
    post = m.posterior(row, m.index.gather(x0_row), torch.tensor([t]))
    # Assert
    slot = next(i for i, p in enumerate(m.index.pos[:, 0].tolist()) if p == span.start)
    torch.testing.assert_close(post[0, slot, :k].double(), brute, rtol=1e-4, atol=1e-6)


def test_kl_at_the_first_step_is_the_cross_entropy(family: DPDiffusion, rows: torch.Tensor) -> None:
    # Arrange: at t = 1, ᾱ_0 = 1, so q(x_0 | x_1, x_0) is x_0 itself and the KL is −log p(x_0 | x_1).
    m = family.module
    assert isinstance(m, TabularDenoiser)
    x0 = rows[:5]
    t = torch.ones(5, dtype=torch.long)
    x_t, _ = m.noised(x0, t, torch.Generator().manual_seed(1))
    out = m.denoise(x_t, t).detach()
    # Act
    true = m.posterior(x_t, m.index.gather(x0), t)
    pred = m.posterior(x_t, m.x0_probs(out), t)
    # Assert
    torch.testing.assert_close(true, m.index.gather(x0))
    picked = (pred * m.index.gather(x0)).sum(2)
    kl = (true * (torch.log(true + 1e-12) - torch.log(pred + 1e-12))).sum(2)
    torch.testing.assert_close(kl, -torch.log(picked), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- settings and files
def test_diffusion_steps_setting_is_validated_and_travels() -> None:
    # Act
    s = ModelSettings.from_config({"generator": "dp-diffusion", "diffusion-steps": 80})
    # Assert
    assert s.diffusion_steps == 80 and ModelSettings.from_config(s.to_config()) == s
    with pytest.raises(ConfigError, match=r"diffusion-steps.*must be 2\.\.1000"):
        ModelSettings.from_config({"diffusion-steps": 1})


def test_state_dict_and_saved_model_round_trip(
    family: DPDiffusion, cohort: Schema, tmp_path: Path
) -> None:
    # Arrange: weights only (the schedule and embeddings are rebuilt from the settings)
    state = family.state_dict()
    assert sorted(state) == sorted(
        f"{a}.{b}" for a in ("inp", "mid", "out") for b in ("weight", "bias")
    )
    # Act
    other = build_generator(cohort, SETTINGS)
    other.load_state_dict(state)
    save_model(tmp_path / "model", family, extra={})
    loaded, manifest = load_model(tmp_path / "model")
    # Assert
    assert manifest["model_settings"]["diffusion_steps"] == 20
    assert loaded.name == "dp-diffusion"
    pd.testing.assert_frame_equal(family.sample(50, seed=4), other.sample(50, seed=4))
    pd.testing.assert_frame_equal(family.sample(50, seed=4), loaded.sample(50, seed=4))


# ---------------------------------------------------------------------- sampling
def test_samples_are_valid_against_the_schema(family: DPDiffusion, cohort: Schema) -> None:
    # Act
    table = family.sample(400, seed=1)
    # Assert: validates (dtypes, bounds, categories), exact count, reproducible
    assert len(validate_frame(table.astype(object).where(table.notna(), None), cohort)) == 400
    for col in cohort.columns:
        values = table[col.name].dropna()
        if col.kind == "categorical":
            assert set(values) <= set(col.categories)
        else:
            assert values.min() >= col.minimum and values.max() <= col.maximum
    assert str(table["age"].dtype) == "Int64" and str(table["bmi"].dtype) == "float64"
    pd.testing.assert_frame_equal(table, family.sample(400, seed=1))


def test_sample_distribution_is_normalised(family: DPDiffusion) -> None:
    # Act
    dist = family.sample_distribution(64, torch.Generator().manual_seed(0))
    # Assert: each one-hot span sums to 1; numerics are points in [-1, 1]
    for span in family.transformer.spans:
        block = dist.params[:, span.start : span.stop]
        if span.kind == "numeric":
            assert np.all(np.abs(block) <= 1) and np.all(dist.scale[:, span.start] == 0)
        else:
            np.testing.assert_allclose(block.sum(1), 1.0, rtol=1e-6)


def test_conditioned_sampling_holds_the_condition(family: DPDiffusion) -> None:
    # Act
    table = family.sample(100, seed=2, conditions={"smoker": "current"})
    # Assert
    assert len(table) == 100 and set(table["smoker"]) == {"current"}


# ---------------------------------------------------------------------- training
def test_non_dp_fit_lowers_the_loss(family: DPDiffusion, rows: torch.Tensor) -> None:
    # Arrange
    before = _mean_loss(family, rows)
    # Act
    train_plain(family, rows, steps=60, sample_rate=0.2, learning_rate=1e-2, device=CPU, seed=0)
    after = _mean_loss(family, rows)
    # Assert: a clear drop, not noise
    assert after < 0.6 * before, (before, after)


def test_dp_fit_uses_fused_and_ghost_clipping(family: DPDiffusion, rows: torch.Tensor) -> None:
    # Arrange
    before = {k: v.clone() for k, v in family.state_dict().items()}
    for clipping in ("fused", "ghost"):
        # Act
        stats = train_dp(
            family,
            rows,
            steps=4,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            sample_rate=0.05,
            learning_rate=1e-2,
            device=CPU,
            seed=0,
            clipping=clipping,
        )
        # Assert
        assert stats.steps == 4 and math.isfinite(stats.last_loss)
    after = family.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_site_round_charges_the_expected_epsilon(cohort: Schema, tmp_path: Path) -> None:
    # Arrange: one real site round (ledger, train_dp with Opacus noise, Poisson sampling)
    cohort.save(tmp_path / "schema.json")
    generate_cohort(300, seed=5)[cohort.names].to_csv(tmp_path / "site.csv", index=False)
    site = SiteSettings(
        site_name="h",
        data_path=tmp_path / "site.csv",
        schema_path=tmp_path / "schema.json",
        state_dir=tmp_path / "state",
        budget_epsilon=50.0,
        device="cpu",
        simulation_seed=0,
    )
    run = RunSettings(rounds=1, local_steps=6, sample_rate=0.1, model=SETTINGS)
    train = run.train_settings(1, noise_multiplier=1.3, schema_fingerprint=cohort.fingerprint())
    state = build_generator(cohort, SETTINGS).state_dict()
    # Act
    result = run_site_round(site, train, state, run="diffusion-test")
    # Assert: ε equals Opacus's own RDP figure for σ = 1.3, q = 0.1, 6 steps
    assert result.trained and result.steps == 6 and result.update is not None
    expected = independent_epsilon([(1.3, 0.1, 6)], site.budget_delta)
    assert result.epsilon == pytest.approx(expected, rel=1e-6)
    assert sorted(result.update) == sorted(state)


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_simulate_trains_and_releases_the_diffusion_generator(tmp_path: Path) -> None:
    # Execute: 2 sites, 1 round of 5 DP steps each, on Flower's simulation engine.
    out = tmp_path / "out"
    opts = ["--generator", "dp-diffusion", "--rounds", "1", "--local-steps", "5", "--no-evaluate"]
    report = simulate_small(out, *opts)
    # Assert: each site charged for its 5 steps, the model reloads
    assert report["generator"] == "dp-diffusion"
    assert all(site["steps"] == 5 and 0 < site["epsilon"] <= 3.0 for site in report["sites"])
    family, manifest = load_model(out / "model")
    assert family.name == "dp-diffusion" and manifest["model_settings"]["diffusion_steps"] == 50
