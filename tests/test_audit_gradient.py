"""Tests for the white-box mode of ``fedsynth audit``: Dirac gradient canaries and their scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.training import train_dp
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.errors import AuditError
from shared.models import build_generator
from shared.models.base import GeneratorFamily
from simulations.audit.audit import audit_run
from simulations.audit.gradient import DiracCanaries, DiracScorer, layout, pick_coordinates


def _family() -> GeneratorFamily:
    torch.manual_seed(0)
    return build_generator(cohort_schema(), ModelSettings())


def _site(family: GeneratorFamily, n: int = 30) -> torch.Tensor:
    return torch.from_numpy(family.encode(generate_cohort(n, seed=2)))


# ------------------------------------------------------------------ the mechanism's side
@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=4),
    data=st.data(),
    rate=st.sampled_from([0.0, 0.3, 1.0]),
    clip=st.floats(0.1, 10.0),
    seed=st.integers(0, 1000),
)
def test_canaries_add_c_on_their_own_coordinates_only(
    shapes: list[list[int]], data: st.DataObject, rate: float, clip: float, seed: int
) -> None:
    shapes_ = [(f"p{i}", torch.Size(s)) for i, s in enumerate(shapes)]
    size = sum(s.numel() for _, s in shapes_)
    m = data.draw(st.integers(1, size))
    coords = pick_coordinates(size, m, np.random.default_rng(seed))
    included = np.array(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    canaries = DiracCanaries(
        shapes_, coords, included, sample_rate=rate, max_grad_norm=clip, seed=seed
    )
    sums = {name: torch.zeros(shape) for name, shape in shapes_}

    canaries(sums)

    flat = torch.cat([sums[name].reshape(-1) for name, _ in shapes_]).double()
    present = set(coords[torch.from_numpy(included)].tolist())
    touched = set(torch.nonzero(flat).flatten().tolist())
    assert touched <= present  # excluded canaries and other coordinates get nothing
    assert torch.allclose(flat[list(touched)], torch.full((len(touched),), clip).double())
    assert flat.sum().item() == pytest.approx(clip * canaries.samplings, rel=1e-5)
    if rate == 1.0:
        assert touched == present  # q = 1: every included canary, every step
    if rate == 0.0:
        assert not touched


def test_too_many_canaries_for_the_model_are_refused() -> None:
    with pytest.raises(AuditError, match="the model has only 10 parameters; use --canaries 10"):
        pick_coordinates(10, 11, np.random.default_rng(0))


@pytest.mark.parametrize("clipping", ["fused", "ghost"])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_a_canary_reaches_the_released_gradient_under_the_same_noise(
    clipping: str, sigma: float
) -> None:
    # Known value: one included canary on coordinate j, sampled at q = 1, adds exactly
    # C / B to the released gradient at j and nothing elsewhere; the noise (same seed)
    # is the same with and without it, so it went in before the noise, through Opacus.
    released: list[torch.Tensor] = []

    def run(with_canary: bool) -> None:
        family = _family()
        site = _site(family)
        module = family.private_module()
        hook = DiracCanaries(
            layout(module),
            torch.tensor([7]),
            np.array([True]),
            sample_rate=1.0,
            max_grad_norm=2.0,
            seed=0,
        )
        train_dp(
            family,
            site,
            steps=1,
            noise_multiplier=sigma,
            max_grad_norm=2.0,
            sample_rate=0.5,
            learning_rate=0.01,
            device=torch.device("cpu"),
            seed=3,
            clipping=clipping,
            on_step=lambda mod: released.append(
                torch.cat([p.grad.reshape(-1).clone() for p in mod.parameters()])  # type: ignore[union-attr]
            ),
            audit_hook=hook if with_canary else None,
        )

    run(False)
    run(True)

    diff = released[1] - released[0]
    batch = round(0.5 * 30)
    assert diff[7].item() == pytest.approx(2.0 / batch, rel=1e-4)
    diff[7] = 0.0
    assert diff.abs().max().item() < 1e-6


# ------------------------------------------------------------------ the auditor's side
def _set_grads(module: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in module.parameters():
        p.grad = flat[offset : offset + p.numel()].reshape(p.shape).clone().float()
        offset += p.numel()


def test_score_is_the_residual_on_each_canary_coordinate_in_units_of_c() -> None:
    # Known value: adding λ·C/B to the released gradient at canary 1's coordinate adds
    # exactly λ to s_1 and nothing to the other canaries.
    family = _family()
    site = _site(family)
    module = family.private_module()
    coords = torch.tensor([3, 40, 500])

    def scorer() -> DiracScorer:
        s = DiracScorer(family, site, coords, sample_rate=0.2, max_grad_norm=0.5, seed=7)
        s.begin(module)
        return s

    a, b = scorer(), scorer()
    base = torch.randn(sum(p.numel() for p in module.parameters()))
    bump = torch.zeros_like(base)
    bump[40] = 3.0 * 0.5 / a.batch

    _set_grads(module, base)
    a.observe(module)
    _set_grads(module, base + bump)
    b.observe(module)

    assert a.batch == round(0.2 * 30)
    diff = (b.scores - a.scores).tolist()
    assert diff == pytest.approx([0.0, 3.0, 0.0], abs=1e-4)
    assert a.steps == b.steps == 1


def test_a_released_gradient_equal_to_the_expected_one_scores_zero() -> None:
    family = _family()
    site = _site(family)
    module = family.private_module()
    scorer = DiracScorer(family, site, torch.arange(20), sample_rate=0.2, max_grad_norm=1.0, seed=1)
    scorer.begin(module)
    theta = {n: p.detach().clone() for n, p in module.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # the scorer's draws at its first step (seed + 0)
        expected = scorer.expected_rows_sum(theta)

    _set_grads(module, expected / scorer.batch)
    scorer.observe(module)

    assert scorer.scores.abs().max().item() < 1e-4


def test_fused_expected_sum_equals_the_per_row_gradient_one() -> None:
    # The fast path (the site's fused clipping) and per-row vmap gradients agree.
    family = _family()
    scorer = DiracScorer(
        family, _site(family, 50), torch.arange(5), sample_rate=0.3, max_grad_norm=0.5, seed=0
    )
    theta = {n: p.detach().clone() for n, p in family.private_module().named_parameters()}

    torch.manual_seed(1)
    fast = scorer.expected_rows_sum(theta)
    torch.manual_seed(1)
    slow = 0.3 * scorer.clipped_sum_vmap(theta)

    assert fast.norm().item() > 0.1
    assert torch.allclose(fast, slow, atol=1e-5)


def test_observing_does_not_change_the_mechanism() -> None:
    # Same seed with and without the observer: bit-identical weights (the scorer's
    # randomness runs on a forked RNG and it never writes to the trained module).
    family_a, family_b = _family(), _family()
    site = _site(family_a)
    scorer = DiracScorer(
        family_b, site, torch.arange(10), sample_rate=0.3, max_grad_norm=1.0, seed=1
    )
    scorer.begin(family_b.private_module())
    kwargs = dict(
        steps=4,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.3,
        learning_rate=0.01,
        device=torch.device("cpu"),
        seed=3,
    )

    train_dp(family_a, site, **kwargs)  # type: ignore[arg-type]
    train_dp(family_b, site, on_step=scorer.observe, **kwargs)  # type: ignore[arg-type]

    assert scorer.steps == 4
    assert torch.isfinite(scorer.scores).all()
    state_b = family_b.state_dict()
    for name, pa in family_a.state_dict().items():
        assert torch.equal(pa, state_b[name]), name


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(AuditError, match="unknown audit mode 'grey-box'"):
        audit_run(None, None, k=1, device=torch.device("cpu"), mode="grey-box")  # type: ignore[arg-type]
