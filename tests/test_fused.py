"""Fused per-row clipping gives exactly the clipped sum of per-row gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from client.errors import TrainingError
from client.fused import FusedClipper, supports
from client.training import train_dp
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.models import GeneratorFamily, build_generator
from shared.tables import validate_frame


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    schema = cohort_schema()
    raw = generate_cohort(400, seed=4)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    return torch.from_numpy(build_generator(schema, ModelSettings()).encode(frame))


def _family() -> GeneratorFamily:
    torch.manual_seed(0)
    return build_generator(cohort_schema(), ModelSettings())


def _per_row_clipped_sum(
    family: GeneratorFamily, batch: torch.Tensor, clip: float
) -> list[torch.Tensor]:
    """Reference: one autograd call per row, explicit clipping, then the sum."""
    module, crit = family.module, family.criterion()
    crit.reduction = "none"
    params = [p for p in module.parameters()]
    torch.manual_seed(1)
    losses = crit(module(batch), batch)
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        coef = min(1.0, clip / (float(norm) + 1e-6))
        total = [t + coef * g for t, g in zip(total, grads, strict=True)]
    return total


def test_fused_sum_equals_per_row_clipping(rows: torch.Tensor) -> None:
    # Prepare: a clip norm at which some rows are clipped and some are not
    family, batch = _family(), rows[:24]
    module, crit = family.module, family.criterion()
    crit.reduction = "none"
    clipper = FusedClipper(module, max_grad_norm=1.0)
    torch.manual_seed(1)
    norms = clipper.clipped_sum(crit(module(batch), batch))
    clip = float(norms.median())
    torch.manual_seed(1)

    # Execute
    clipper.max_grad_norm = clip
    clipper.clipped_sum(crit(module(batch), batch))
    fused = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    clipper.close()
    expected = _per_row_clipped_sum(family, batch, clip)

    # Assert
    assert (norms > clip).any() and (norms < clip).any()
    assert len(fused) == len(expected)
    for got, want in zip(fused, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fused_training_matches_opacus_ghost_clipping(rows: torch.Tensor) -> None:
    # Same init, seed and Poisson batches, no noise: the two must take the same steps.
    results = {}
    for mode in ("fused", "ghost"):
        family = _family()
        train_dp(
            family,
            rows,
            steps=4,
            noise_multiplier=0.0,
            max_grad_norm=0.5,
            sample_rate=0.1,
            learning_rate=1e-2,
            device=torch.device("cpu"),
            seed=3,
            clipping=mode,
        )
        results[mode] = family.state_dict()
    for key, value in results["fused"].items():
        torch.testing.assert_close(value, results["ghost"][key], rtol=1e-4, atol=1e-5)


def test_models_with_other_trainable_layers_are_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))

    assert not supports(model)
    with pytest.raises(TrainingError, match=r"all nn\.Linear; use Opacus ghost clipping"):
        FusedClipper(model, max_grad_norm=1.0)


def test_a_layer_used_twice_per_forward_is_refused() -> None:
    layer = nn.Linear(2, 2)
    clipper = FusedClipper(layer, max_grad_norm=1.0)
    x = torch.ones(3, 2)
    out = layer(layer(x))

    with pytest.raises(TrainingError, match="exactly once per forward pass"):
        clipper.clipped_sum(out.sum(1))
