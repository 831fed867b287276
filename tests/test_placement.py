"""The in-process distributed DP-SGD loop used by the frontier benchmark."""

from __future__ import annotations

import pytest
import torch

from shared.cohort import cohort_schema
from shared.config import ModelSettings
from shared.distdp.plan import DistributedPlan
from shared.models import GeneratorFamily, build_generator
from shared.secagg.errors import SecAggAbortedError
from simulations.placement import train_distributed, train_local, train_pooled


def _setup(noise_sites: int) -> tuple[GeneratorFamily, list[torch.Tensor], DistributedPlan]:
    torch.manual_seed(0)
    family = build_generator(cohort_schema(), ModelSettings(hidden=8, latent=2))
    width = next(family.private_module().parameters()).shape[1]  # encoder input width
    sites = [torch.rand(20, width), torch.rand(30, width), torch.rand(25, width)]
    plan = DistributedPlan(
        epsilon=1.0,
        delta=1e-5,
        steps=2,
        sample_rate=0.2,
        clip_norm=1.0,
        learning_rate=0.01,
        expected_batch=15.0,
        noise_sites=noise_sites,
        threshold=2,
    )
    return family, sites, plan


def test_training_moves_the_weights_through_the_secure_sum() -> None:
    family, sites, plan = _setup(noise_sites=3)
    before = {k: v.clone() for k, v in family.state_dict().items()}
    cost = train_distributed(family, sites, plan, seed=1)
    after = family.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert cost.secagg_s > 0 and cost.total_s >= cost.compute_s + cost.secagg_s


def test_fewer_sites_than_noise_shares_abort_the_round() -> None:
    family, sites, plan = _setup(noise_sites=4)
    with pytest.raises(SecAggAbortedError, match="too little noise"):
        train_distributed(family, sites, plan, seed=1)


def test_no_dp_baselines_train_without_noise_or_accounting() -> None:
    family, sites, _ = _setup(noise_sites=3)
    before = {k: v.clone() for k, v in family.state_dict().items()}
    # ε = None: no σ is calibrated (it would raise for an infinite budget).
    train_pooled(
        family,
        torch.cat(sites),
        epsilon=None,
        delta=1e-5,
        steps=3,
        sample_rate=0.3,
        clip_norm=1.0,
        learning_rate=0.01,
        seed=0,
    )
    pooled = family.state_dict()
    assert any(not torch.equal(before[k], pooled[k]) for k in before)
    train_local(
        family,
        sites,
        epsilon=None,
        delta=1e-5,
        rounds=2,
        local_steps=2,
        sample_rate=0.3,
        clip_norm=1.0,
        learning_rate=0.01,
        update_clip_norm=10.0,
        seed=0,
    )
    assert any(not torch.equal(pooled[k], v) for k, v in family.state_dict().items())
