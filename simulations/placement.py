"""In-process DP-SGD with each noise placement, for benchmarks (no Flower, no ledgers).

* ``local``: FedAvg of site updates, each trained with local DP-SGD (noise sized
  to the site's own batch), the same maths as a ``fedsynth simulate`` round.
* ``distributed``: one central DP-SGD step per secure aggregation round, the
  noise split over the K sites (:mod:`shared.distdp`), the real protocol maths of
  :mod:`shared.secagg` run in process.
* ``pooled``: the trusted-curator baseline, DP-SGD on the union of the rows.

Every placement spends the same ε per row; ``calibrated_sigma`` gives σ.
``epsilon=None`` in ``local`` and ``pooled`` is the non-private baseline of the
same loop (:func:`client.training.train_plain`: no clipping, no noise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from client.site import clip_update
from client.training import train_dp, train_plain
from server.optimisers import build_optimiser
from server.strategy import mean_update
from shared.accounting import calibrate_noise
from shared.config import AggregationSettings
from shared.distdp.encoding import ModularCodec
from shared.distdp.plan import DistributedPlan
from shared.distdp.step import (
    clipped_gradient_sum,
    parameter_count,
    poisson_batch,
    secure_sum,
    site_share,
)
from shared.models.base import GeneratorFamily


@dataclass(frozen=True)
class RoundCost:
    """Mean seconds per distributed round: site compute, secure aggregation, total."""

    compute_s: float
    secagg_s: float
    total_s: float


def train_distributed(
    family: GeneratorFamily, sites: list[torch.Tensor], plan: DistributedPlan, *, seed: int
) -> RoundCost:
    """Train ``family`` in place with distributed DP-SGD; one secure round per step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    module = family.private_module().train()
    criterion = family.criterion()
    dim = parameter_count(module)
    codec = ModularCodec(grid=plan.grid)
    sigma = plan.sigma(dim)
    codec.check_headroom(bound=(4 * plan.expected_batch + 64 + 20 * sigma) * plan.clip_norm)
    optimizer = torch.optim.Adam(module.parameters(), lr=plan.learning_rate)
    compute = secagg = 0.0
    t_start = time.perf_counter()
    for _ in range(plan.steps):
        t0 = time.perf_counter()
        shares = {}
        for i, data in enumerate(sites, start=1):
            batch = poisson_batch(data, sample_rate=plan.sample_rate, rng=rng)
            g = clipped_gradient_sum(module, criterion, batch, clip_norm=plan.clip_norm)
            shares[i] = site_share(
                g,
                sigma=sigma,
                clip_norm=plan.clip_norm,
                noise_sites=plan.noise_sites,
                codec=codec,
                rng=rng,
            )
        t1 = time.perf_counter()
        total = secure_sum(
            shares, codec=codec, threshold=plan.threshold, min_participants=plan.noise_sites
        )
        t2 = time.perf_counter()
        compute, secagg = compute + t1 - t0, secagg + t2 - t1
        flat = torch.from_numpy(total / plan.expected_batch).float()
        optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in module.parameters():
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
    n = plan.steps
    return RoundCost(compute / n, secagg / n, (time.perf_counter() - t_start) / n)


def train_pooled(
    family: GeneratorFamily,
    data: torch.Tensor,
    *,
    epsilon: float | None,
    delta: float,
    steps: int,
    sample_rate: float,
    clip_norm: float,
    learning_rate: float,
    seed: int,
) -> None:
    """Trusted curator: central DP-SGD (Opacus) on all rows, ε per row (None: no DP)."""
    if epsilon is None:
        cpu = torch.device("cpu")
        train_plain(
            family,
            data,
            steps=steps,
            sample_rate=sample_rate,
            learning_rate=learning_rate,
            device=cpu,
            seed=seed,
        )
        return
    sigma = calibrate_noise(
        target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps
    )
    train_dp(
        family,
        data,
        steps=steps,
        noise_multiplier=sigma,
        max_grad_norm=clip_norm,
        sample_rate=sample_rate,
        learning_rate=learning_rate,
        device=torch.device("cpu"),
        seed=seed,
    )


def train_local(
    family: GeneratorFamily,
    sites: list[torch.Tensor],
    *,
    epsilon: float | None,
    delta: float,
    rounds: int,
    local_steps: int,
    sample_rate: float,
    clip_norm: float,
    learning_rate: float,
    update_clip_norm: float,
    seed: int,
    aggregation: AggregationSettings | None = None,
) -> None:
    """Rounds of local DP-SGD at each site, ε per row at each site.

    The server step is ``aggregation``'s optimiser (:mod:`server.optimisers`) on the
    mean of the clipped updates, as in ``fedsynth simulate``; default FedAvg. With
    ``epsilon=None`` the sites train without DP (the no-DP column of the frontier);
    the update clip stays, so only the privacy noise differs.
    """
    agg = aggregation or AggregationSettings()
    server = build_optimiser(agg)
    sigma = (
        None
        if epsilon is None
        else calibrate_noise(
            target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=rounds * local_steps
        )
    )
    state = {k: v.clone() for k, v in family.state_dict().items()}
    for rnd in range(rounds):
        updates = []
        for i, data in enumerate(sites):
            family.load_state_dict(state)
            site_seed = seed * 100_003 + rnd * 101 + i
            if sigma is None:
                train_plain(
                    family,
                    data,
                    steps=local_steps,
                    sample_rate=sample_rate,
                    learning_rate=learning_rate,
                    device=torch.device("cpu"),
                    seed=site_seed,
                )
            else:
                train_dp(
                    family,
                    data,
                    steps=local_steps,
                    noise_multiplier=sigma,
                    max_grad_norm=clip_norm,
                    sample_rate=sample_rate,
                    learning_rate=learning_rate,
                    device=torch.device("cpu"),
                    seed=site_seed,
                    proximal_mu=agg.site_proximal_mu,
                    # As fedsynth simulate: q × the announced rows per site, public.
                    expected_batch=max(1.0, sample_rate * sum(map(len, sites)) / len(sites)),
                )
            new = family.state_dict()
            upd, _ = clip_update({k: new[k] - state[k] for k in state}, update_clip_norm)
            updates.append(upd)
        state = server.apply(state, mean_update(updates))
    family.load_state_dict(state)
