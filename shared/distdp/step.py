"""One distributed DP-SGD step: the sites' noisy shares and the server's sum.

Site ``i`` (:func:`site_share`): Poisson-sample rows at rate q, sum their
per-row gradients clipped to C, round the sum to the grid, add discrete Gaussian
noise of variance σ²C²/K, reduce modulo ``2**k``. The server (:func:`secure_sum`)
learns only the sum through the secure aggregation protocol of
:mod:`shared.secagg` and divides it by a *public* expected batch size before the
optimiser step.

Per-row gradients come from ``torch.func`` (``vmap`` over ``grad``), the same
vectorised per-sample machinery Opacus's functorch grad sampler uses; no Opacus
optimiser is involved because the noise is not added locally in full.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from shared.distdp.encoding import IntVector, ModularCodec, discrete_gaussian
from shared.secagg import (
    SecAggAbortedError,
    ServerRound,
    site_mask,
    site_setup,
    site_share_keys,
    site_unmask,
)


def parameter_count(module: nn.Module) -> int:
    """d: number of trainable parameters (coordinates of the gradient)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def clipped_gradient_sum(
    module: nn.Module, criterion: nn.Module, batch: torch.Tensor, *, clip_norm: float
) -> torch.Tensor:
    """Σ over rows of each row's gradient scaled to L2 norm at most C (float64, flat).

    Parameters
    ----------
    module, criterion : nn.Module
        The model and a criterion that returns one loss per row (``reduction="none"``)
        or their mean (for one row the two agree).
    batch : torch.Tensor
        Rows of one Poisson sample (may be empty: the sum is then zero), on the
        module's device; the sum is returned on that device.
    clip_norm : float
        C: per-row L2 bound.
    """
    params = {k: v.detach() for k, v in module.named_parameters() if v.requires_grad}
    d = sum(v.numel() for v in params.values())
    if batch.shape[0] == 0:
        return torch.zeros(d, dtype=torch.float64, device=batch.device)

    def loss(p: Mapping[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
        x = row.unsqueeze(0)
        out: torch.Tensor = criterion(functional_call(module, dict(p), (x,)), x).sum()
        return out

    per_row = vmap(grad(loss), in_dims=(None, 0), randomness="different")(params, batch)
    flat = torch.cat([g.reshape(batch.shape[0], -1) for g in per_row.values()], dim=1).double()
    norms = flat.norm(dim=1, keepdim=True)
    # The 1e-6 margin keeps float rounding from pushing a clipped row above C.
    scale = torch.clamp(clip_norm * (1 - 1e-6) / (norms + 1e-12), max=1.0)
    return (flat * scale).sum(dim=0)


def poisson_batch(
    data: torch.Tensor, *, sample_rate: float, rng: np.random.Generator
) -> torch.Tensor:
    """Rows kept independently with probability q (the sampling the accountant assumes)."""
    keep = rng.random(len(data)) < sample_rate
    return data[torch.from_numpy(keep)]


def site_share(
    grad_sum: torch.Tensor,
    *,
    sigma: float,
    clip_norm: float,
    noise_sites: int,
    codec: ModularCodec,
    rng: np.random.Generator,
) -> IntVector:
    """A site's ring element: round(Σ clipped grads / γ) + N_ℤ(0, σ²C²/(Kγ²)) mod ``2**k``.

    Parameters
    ----------
    sigma : float
        σ: total noise std over all K shares, in units of C.
    clip_norm : float
        C: per-row L2 bound.
    noise_sites : int
        K: the number of shares the noise is split over.
    """
    rounded = codec.to_integers(grad_sum.detach().cpu().numpy(), rng)
    scale = sigma * clip_norm / (codec.grid * noise_sites**0.5)
    return codec.wrap(rounded + discrete_gaussian(scale, rounded.size, rng))


def secure_sum(
    shares: dict[int, IntVector],
    *,
    codec: ModularCodec,
    threshold: int,
    min_participants: int,
    drop_after_keys: frozenset[int] = frozenset(),
) -> np.ndarray:
    """Sum the sites' ring elements through secure aggregation; decode to floats.

    Runs the four stages of :mod:`shared.secagg` in process (fresh keys every call).
    ``drop_after_keys`` lists sites that share keys but never send their input,
    to exercise dropouts.

    Raises
    ------
    SecAggAbortedError
        Fewer than ``min_participants`` inputs arrived: the sum would carry less
        than the planned noise, so the round is aborted *before* unmasking and the
        server learns nothing.
    """
    context = f"fedsynth-distdp|{secrets.token_hex(8)}".encode()
    ring = codec.ring
    server = ServerRound(threshold=threshold, codec=ring, context=context)
    mine = {i: site_setup(i) for i in shares}
    roster = server.register_keys({i: s.public for i, s in mine.items()})
    sent = {
        i: site_share_keys(s, roster, threshold=threshold, context=context) for i, s in mine.items()
    }
    inboxes = server.route_shares(sent)
    peers = server.share_senders
    masked = {
        i: site_mask(mine[i], shares[i], peers, codec=ring, context=context)
        for i in inboxes
        if i not in drop_after_keys
    }
    survivors = server.collect_masked(masked)
    if len(survivors) < min_participants:
        raise SecAggAbortedError(
            f"only {len(survivors)} of the {min_participants} sites the noise is split over "
            "sent their input; the sum would carry too little noise, so the round is aborted "
            "before unmasking"
        )
    dropped = set(inboxes) - survivors
    answers = {
        i: site_unmask(
            mine[i],
            roster,
            inboxes[i],
            survivors=survivors,
            dropped=dropped,
            threshold=threshold,
            context=context,
        )
        for i in survivors
    }
    total = server.unmask(answers)
    return codec.decode(total)
