"""Tests for the white-box transcript scorer of ``fedsynth audit``."""

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
from simulations.audit.canaries import make_canaries
from simulations.audit.whitebox import TranscriptScorer


def _family() -> GeneratorFamily:
    torch.manual_seed(0)
    return build_generator(cohort_schema(), ModelSettings())


def _rows(family: GeneratorFamily) -> tuple[torch.Tensor, torch.Tensor]:
    site = torch.from_numpy(family.encode(generate_cohort(30, seed=2)))
    canaries = make_canaries(cohort_schema(), 20, np.random.default_rng(4))
    return site, torch.from_numpy(family.encode(canaries))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_site=st.integers(1, 6),
    n_canaries=st.integers(1, 6),
    dim=st.integers(10, 40),
)
def test_directions_are_unit_and_orthogonal_to_the_site_rows(
    seed: int, n_site: int, n_canaries: int, dim: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    site = torch.randn(n_site, dim, generator=gen, dtype=torch.float64)
    canaries = torch.randn(n_canaries, dim, generator=gen, dtype=torch.float64)

    # Fewer site rows than the projected rank: their whole span is removed.
    u = TranscriptScorer.directions(canaries, site)

    assert torch.allclose(u.norm(dim=1), torch.ones(n_canaries, dtype=torch.float64))
    assert torch.allclose(
        u @ site.T, torch.zeros(n_canaries, n_site, dtype=torch.float64), atol=1e-8
    )


def _observe(scorer: TranscriptScorer, module: torch.nn.Module, grads: torch.Tensor) -> None:
    offset = 0
    for p in module.parameters():
        p.grad = grads[offset : offset + p.numel()].reshape(p.shape).clone()
        offset += p.numel()
    scorer.observe(module)


def test_score_is_the_released_gradient_projected_on_each_canary_direction() -> None:
    # Known answer: adding λ·v to the released gradient adds λ·⟨u_c, v⟩ to s_c, and
    # u_c is the canary's own gradient direction (site span removed), recomputed here.
    family = _family()
    site, canaries = _rows(family)
    module = family.private_module()
    theta = {n: p.detach().clone() for n, p in module.named_parameters()}

    def scorer() -> TranscriptScorer:
        s = TranscriptScorer(family, canaries, site, sample_rate=0.2, max_grad_norm=1.0, seed=7)
        s.begin(module)
        return s

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)  # the scorer's draws at its first step
        probe = scorer()
        g = probe.per_row_gradients(theta, canaries)
        ref = probe.per_row_gradients(theta, probe.reference)
        ref = ref * (1.0 / ref.norm(dim=1, keepdim=True)).clamp(max=1.0)
        u = TranscriptScorer.directions(g, ref)
    base = torch.randn(sum(p.numel() for p in module.parameters()))
    a, b = scorer(), scorer()

    _observe(a, module, base)
    _observe(b, module, base + 3.0 * u[5])

    diff = (b.scores - a.scores).float()
    assert diff[5].item() == pytest.approx(3.0, rel=1e-4)
    assert torch.allclose(diff, 3.0 * (u @ u[5]), atol=1e-4)
    assert a.steps == 1


def test_observing_does_not_change_the_mechanism() -> None:
    # Same seed with and without the observer: bit-identical weights (the scorer's
    # randomness runs on a forked RNG and it never writes to the module).
    family_a, family_b = _family(), _family()
    site, canaries = _rows(family_a)
    data = torch.cat([site, canaries[:10]])
    scorer = TranscriptScorer(family_b, canaries, site, sample_rate=0.3, max_grad_norm=1.0, seed=1)
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

    train_dp(family_a, data, **kwargs)  # type: ignore[arg-type]
    train_dp(family_b, data, on_step=scorer.observe, **kwargs)  # type: ignore[arg-type]

    assert scorer.steps == 4
    assert torch.isfinite(scorer.scores).all()
    state_b = family_b.state_dict()
    for name, pa in family_a.state_dict().items():
        assert torch.equal(pa, state_b[name]), name


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(AuditError, match="unknown audit mode 'grey-box'"):
        audit_run(None, None, k=1, device=torch.device("cpu"), mode="grey-box")  # type: ignore[arg-type]
