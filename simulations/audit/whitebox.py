"""White-box canary scores over the whole DP-SGD transcript.

The accountant's ε covers the release of every step's privatised gradient

    g_t = (Σ_{rows i in batch t} clip_C(∇ℓ_i(θ_t)) + N(0, σ²C²I)) / B,

and hence of every iterate θ_t (Adam is post-processing of the g_t). The audit
runs the mechanism itself, so it may observe the whole transcript
(Steinke, Nasr & Jagielski, NeurIPS 2023, white-box setting). A canary c is
scored by how much the released gradients moved along its own direction:

    s_c = Σ_t ⟨u_c(θ_t), g_t − ĝ_t⟩,   u_c(θ) = ∇ℓ_c(θ) / ‖∇ℓ_c(θ)‖,

where ĝ_t is the part of g_t *expected* without knowing any coin: q times the
clipped gradients of the site's rows and of every canary with weight 1/2,
divided by B. It only removes interference (the always-present rows pull every
canary's score the same way at every step); it uses the transcript, the public
canaries, the site's rows and q, never the coins, so the test stays valid.

When c is in the data and sampled (probability q per step), g_t gains
clip_C(∇ℓ_c)/B, whose projection on u_c is C/B when clipping binds; the DP
noise adds N(0, (σC/B)²) along u_c at every step, so at σ > 0 the signal is
drowned as the guarantee promises, and at σ = 0 it adds up over ≈ q·T steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from shared.models.base import GeneratorFamily

#: Rows of the site (a fixed subset, drawn once) whose gradients estimate ĝ_t each step.
REFERENCE_ROWS = 512
#: Directions of the site rows' gradients projected out of every canary direction.
PROJECTED_RANK = 64


def _flat(tensors: dict[str, torch.Tensor], names: list[str], rows: int) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(rows, -1) for n in names], dim=1)


def _grad_of(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.detach()


class TranscriptScorer:
    """Accumulates s_c over the steps of one or more :func:`client.training.train_dp` calls.

    Use: :meth:`begin` with the module before each call (its weights are θ_0 of
    that call), pass :meth:`observe` as ``on_step``; read :attr:`scores` at the end.

    Parameters
    ----------
    family : GeneratorFamily
        The family being trained (its criterion gives each row's loss).
    canaries : torch.Tensor
        Encoded canaries, all m of them (included or not: the scorer never sees the coins).
    site_rows : torch.Tensor
        The site's encoded rows (always present in the training data).
    sample_rate : float
        q, the Poisson sampling rate of each row per step.
    max_grad_norm : float
        C, the per-row clip norm (in gradient units).
    seed : int
        Seeds the model's own randomness when scoring (``seed`` + step index, drawn
        on a forked RNG so the mechanism's random stream is untouched).
    """

    def __init__(
        self,
        family: GeneratorFamily,
        canaries: torch.Tensor,
        site_rows: torch.Tensor,
        *,
        sample_rate: float,
        max_grad_norm: float,
        seed: int,
    ) -> None:
        # A private copy: the trained module carries Opacus hooks during training.
        self.module = copy.deepcopy(family.private_module())
        self.criterion = family.criterion()
        self.canaries = canaries
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(site_rows), generator=gen)[:REFERENCE_ROWS]
        self.reference = site_rows[pick]
        self.reference_weight = len(site_rows) / max(1, len(pick))
        # Each canary joins with probability 1/2, so in expectation m/2 are present
        # (the actual count depends on the coins and must not be used).
        self.expected_batch = sample_rate * (len(site_rows) + len(canaries) / 2)
        self.sample_rate, self.max_grad_norm, self.seed = sample_rate, max_grad_norm, seed
        self.scores = torch.zeros(len(canaries), dtype=torch.float64)
        self.steps = 0
        self._theta: dict[str, torch.Tensor] = {}

    def begin(self, module: nn.Module) -> None:
        """Record θ_0 of the next training call (the weights it starts from)."""
        self._theta = {n: p.detach().clone() for n, p in module.named_parameters()}

    def per_row_gradients(self, theta: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """One flattened gradient of the loss per row at ``theta`` (rows × parameters)."""
        module, criterion = self.module, self.criterion

        def loss(params: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            x = row.unsqueeze(0)
            out: torch.Tensor = criterion(functional_call(module, params, (x,)), x)
            return out

        names = list(theta)
        grads = vmap(grad(loss), in_dims=(None, 0), randomness="different")(theta, rows)
        return _flat(grads, names, len(rows))

    def _clip(self, g: torch.Tensor) -> torch.Tensor:
        norms = g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        clipped: torch.Tensor = g * (self.max_grad_norm / norms).clamp(max=1.0)
        return clipped

    def _clipped(self, theta: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        return self._clip(self.per_row_gradients(theta, rows))

    @staticmethod
    def directions(canary_grads: torch.Tensor, site_grads: torch.Tensor) -> torch.Tensor:
        """Unit canary directions u_c with the site rows' main gradient subspace removed.

        The site's rows are in every batch, so their gradients' leading directions
        carry most of the step-to-step fluctuation of g_t; a canary direction
        orthogonal to them sees less of it (measured: about twice the separation
        of plain gradient directions on the built-in cohort).
        """
        directions = canary_grads
        rank = min(PROJECTED_RANK, *site_grads.shape)
        if rank > 0:
            _, _, basis = torch.svd_lowrank(site_grads, q=rank, niter=2)
            directions = canary_grads - (canary_grads @ basis) @ basis.T
        units: torch.Tensor = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return units

    def observe(self, module: nn.Module) -> None:
        """Score one step: ``module.grad`` is g_t (computed at θ_t), its weights θ_{t+1}."""
        names = list(self._theta)
        params = dict(module.named_parameters())
        # A parameter without .grad (never the case with Opacus) moved by zero.
        released = torch.cat([_grad_of(params[n]).reshape(-1) for n in names])
        # A forked RNG: the scorer's draws (the model's own noise, the SVD's start)
        # must neither disturb nor be coupled with the mechanism's random stream.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + self.steps)
            g = self.per_row_gradients(self._theta, self.canaries)
            ref = self._clipped(self._theta, self.reference)
            expected = (self.reference_weight * ref.sum(dim=0) + 0.5 * self._clip(g).sum(dim=0)) * (
                self.sample_rate / self.expected_batch
            )
            self.scores += (self.directions(g, ref) @ (released - expected)).double()
        self.steps += 1
        self._theta = {n: p.detach().clone() for n, p in params.items()}
