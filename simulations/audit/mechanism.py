"""The mechanism under audit: a site's whole contribution to a run, on a throwaway copy.

A site in a run of R rounds × k local steps starts each round from the global
weights, runs :func:`client.training.train_dp` for k steps, and sends its update
clipped to the update-norm bound. The audit runs exactly that code with the
run's σ, C, q, learning rate and step counts, with this site as the only one
in the federation: other sites' updates do not depend on this site's rows, so
leaving them out can only make membership easier to see (a stronger audit).
The result is the final global model, which everything the coordinator sees
(the R updates) determines.

Nothing here opens a ledger: the training is a throwaway, charged nowhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from client.site import clip_update
from client.steppers import ClippedSumHook
from client.training import train_dp
from shared.config import RunSettings
from shared.models import build_generator
from shared.models.base import GeneratorFamily
from shared.schema import Schema
from simulations.audit.gradient import DiracScorer

#: Clip norm standing for "clipping off" in the positive control (no row reaches it).
NO_CLIPPING = 1e12
#: Draws of the model's randomness averaged per canary score (same draws for every model).
SCORE_DRAWS = 16


@dataclass(frozen=True)
class Mechanism:
    """The DP-SGD settings of one audited contribution (all public).

    Attributes
    ----------
    noise_multiplier : float
        σ, noise std in units of C (0 for the positive control).
    max_grad_norm : float
        C, per-row clip norm (:data:`NO_CLIPPING` when clipping is off).
    label : str
        Name of the run in the report.
    """

    noise_multiplier: float
    max_grad_norm: float
    label: str

    @classmethod
    def of_run(cls, settings: RunSettings) -> Mechanism:
        """The mechanism a site runs for ``settings`` (σ calibrated to its ε)."""
        return cls(settings.noise_multiplier(), settings.max_grad_norm, "DP run")

    @classmethod
    def positive_control(cls, max_grad_norm: float | None = None) -> Mechanism:
        """The same training with no noise (not DP at all).

        ``max_grad_norm`` is C (keeps clipping on, so the canaries' gradients are
        comparable with the rows'); ``None`` turns clipping off as well.
        """
        if max_grad_norm is None:
            return cls(0.0, NO_CLIPPING, "positive control (σ = 0, clipping off)")
        return cls(0.0, max_grad_norm, f"positive control (σ = 0, C = {max_grad_norm:g})")


def _round_seed(seed: int, tag: str, server_round: int) -> int:
    text = f"{seed}:{tag}:{server_round}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def train_contribution(
    schema: Schema,
    settings: RunSettings,
    data: torch.Tensor,
    *,
    mechanism: Mechanism,
    seed: int,
    tag: str,
    device: torch.device,
    scorer: DiracScorer | None = None,
    canaries: ClippedSumHook | None = None,
) -> GeneratorFamily:
    """Run the site's R rounds of local DP-SGD on ``data``; return the final model.

    Parameters
    ----------
    schema, settings : Schema, RunSettings
        The public schema and the run's settings (rounds, local steps, q, lr, update clip).
    data : torch.Tensor
        Encoded training rows (the site's rows plus the included canaries).
    mechanism : Mechanism
        σ and C to train with.
    seed : int
        Seeds the initial weights; ``tag`` separates the sampling/noise seeds of models.
    scorer : DiracScorer, optional
        White-box observer of every DP-SGD step (it never sees the canaries' coins).
    canaries : ClippedSumHook, optional
        Gradient canaries added to every step's clipped sum before the noise
        (:class:`simulations.audit.gradient.DiracCanaries`).
    """
    torch.manual_seed(seed)
    family = build_generator(schema, settings.model)
    global_state = family.state_dict()
    for server_round in range(1, settings.rounds + 1):
        family.load_state_dict(global_state)
        if scorer is not None:
            scorer.begin(family.private_module())
        train_dp(
            family,
            data,
            steps=settings.local_steps,
            noise_multiplier=mechanism.noise_multiplier,
            max_grad_norm=mechanism.max_grad_norm,
            sample_rate=settings.sample_rate,
            learning_rate=settings.learning_rate,
            # The public divisor, as at a site: the same for models with and without
            # the canaries, so the row count cannot tell them apart.
            expected_batch=settings.expected_batch,
            device=device,
            seed=_round_seed(seed, tag, server_round),
            on_step=scorer.observe if scorer is not None else None,
            audit_hook=canaries,
        )
        new_state = family.state_dict()
        update = {k: new_state[k].cpu() - global_state[k].cpu() for k in global_state}
        update, _ = clip_update(update, settings.update_clip_norm)
        global_state = {k: global_state[k] + update[k] for k in global_state}
    family.load_state_dict(global_state)
    return family


@torch.no_grad()
def per_row_loss(family: GeneratorFamily, rows: torch.Tensor, *, seed: int) -> np.ndarray:
    """Each row's loss under the family's own criterion, averaged over model randomness.

    The same ``seed`` is used for every model scored, so differences between
    models are not blurred by different random draws (common random numbers).
    """
    module = family.module
    device = next(module.parameters()).device
    criterion = family.criterion()
    # Every family's criterion has a ``reduction`` attribute (the plugin contract);
    # nn.Module's type stubs do not know it, hence setattr.
    setattr(criterion, "reduction", "none")  # noqa: B010
    module.eval()
    x = rows.to(device)
    torch.manual_seed(seed)
    total = torch.zeros(len(rows), dtype=torch.float64, device=device)
    for _ in range(SCORE_DRAWS):
        total += criterion(module(x), x).double()
    return (total / SCORE_DRAWS).cpu().numpy()
