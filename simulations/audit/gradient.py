"""Dirac gradient canaries: the white-box mode of the one-run audit.

A Dirac canary c is a gradient, not a record: C·e_{j_c}, the clip norm C on one
coordinate j_c of the flattened parameters, zero elsewhere (Nasr, Hayes, Steinke,
Balle, Tramèr, Jagielski, Carlini & Terzis, "Tight Auditing of Differentially
Private Machine Learning", USENIX Security 2023; Steinke, Nasr & Jagielski,
NeurIPS 2023, Section 7, white-box DP-SGD). Each of the m canaries sits on its own
coordinate and joins the run with probability 1/2 (the coin). At every DP-SGD step
each included canary is Poisson-sampled at the run's rate q, like a row, and its
gradient is added to the clipped sum *before* Opacus adds the noise N(0, σ²C²)
(:data:`client.steppers.ClippedSumHook`): it is a record whose clipped gradient
is C·e_{j_c}, so the accountant's ε covers it exactly as it covers a row.

The auditor sees every step's released gradient g_t = (clipped sum + noise)/B at
θ_t (white-box: the transcript the accountant's ε covers) and scores

    s_c = (B / C) · Σ_t (g_t − ĝ_t)[j_c],

where ĝ_t = q · Σ_i clip_C(∇ℓ_i(θ_t)) / B is what the site's rows contribute in
expectation at θ_t (all rows; the auditor knows the dataset, as the DP adversary
may). ĝ_t removes the rows' pull on the canary coordinate (training pulls a
coordinate back against a canary's push, which would otherwise cancel its signal);
it uses the transcript and the rows, never the coins, so the test stays valid.
An included canary adds its number of samplings (≈ q·T) to s_c; the noise adds
N(0, σ²) per step, drowning it at the run's σ, as the guarantee promises.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from client import fused
from client.training import step_divisor
from shared.errors import AuditError
from shared.models.base import GeneratorFamily

#: Rows per vmap call when computing the rows' expected clipped sum (bounds memory).
CHUNK_ROWS = 1024

Layout = list[tuple[str, torch.Size]]


def _flat_grad(params: dict[str, nn.Parameter], names: list[str]) -> torch.Tensor:
    # A parameter without .grad (never the case after a DP-SGD step) moved by zero.
    grads = [params[n].grad for n in names]
    return torch.cat(
        [
            torch.zeros(params[n].numel()) if g is None else g.detach().reshape(-1).cpu()
            for n, g in zip(names, grads, strict=True)
        ]
    )


def layout(module: nn.Module) -> Layout:
    """Names and shapes of the trainable parameters, in the order they are flattened."""
    return [(n, p.shape) for n, p in module.named_parameters() if p.requires_grad]


def pick_coordinates(n_parameters: int, m: int, rng: np.random.Generator) -> torch.Tensor:
    """m distinct flat coordinates, uniformly at random (drawn before any coin is seen)."""
    if m > n_parameters:
        raise AuditError(
            f"{m} gradient canaries need {m} distinct coordinates but the model has only "
            f"{n_parameters} parameters; use --canaries {n_parameters} or fewer"
        )
    return torch.from_numpy(rng.choice(n_parameters, size=m, replace=False)).long()


class DiracCanaries:
    """The mechanism's side: adds the sampled included canaries to each clipped sum.

    Call it as ``train_dp(audit_hook=...)``. It alone knows the coins.

    Parameters
    ----------
    shapes : Layout
        The trainable parameters (see :func:`layout`).
    coordinates : torch.Tensor
        j_c for every canary (m distinct flat indices).
    included : numpy.ndarray
        The coins: ``True`` if canary c joins the run.
    sample_rate : float
        q, each included canary's Poisson sampling rate per step (the rows' rate).
    max_grad_norm : float
        C, the canary's gradient norm (the per-row clip norm).
    seed : int
        Seeds the canaries' own Poisson sampling (independent of the rows').
    """

    def __init__(
        self,
        shapes: Layout,
        coordinates: torch.Tensor,
        included: np.ndarray,
        *,
        sample_rate: float,
        max_grad_norm: float,
        seed: int,
    ) -> None:
        self.shapes = shapes
        self.size = sum(s.numel() for _, s in shapes)
        self.present = coordinates[torch.from_numpy(np.asarray(included, dtype=bool))]
        self.sample_rate, self.max_grad_norm = sample_rate, max_grad_norm
        self.generator = torch.Generator().manual_seed(seed)
        self.samplings = 0

    def __call__(self, sums: dict[str, torch.Tensor]) -> None:
        """Add C·e_{j_c} to the clipped sum for each included canary sampled this step."""
        sampled = torch.rand(len(self.present), generator=self.generator) < self.sample_rate
        self.samplings += int(sampled.sum())
        flat = torch.zeros(self.size, dtype=torch.float64)
        flat[self.present[sampled]] = self.max_grad_norm
        offset = 0
        for name, shape in self.shapes:
            target = sums[name]
            part = flat[offset : offset + shape.numel()].reshape(shape)
            target.add_(part.to(device=target.device, dtype=target.dtype))
            offset += shape.numel()


class DiracScorer:
    """The auditor's side: accumulates s_c over the steps of one or more ``train_dp`` calls.

    Use: :meth:`begin` with the module before each call (its weights are θ_0 of
    that call), pass :meth:`observe` as ``on_step``; read :attr:`scores` at the end.

    Parameters
    ----------
    family : GeneratorFamily
        The family being trained (its criterion gives each row's loss).
    site_rows : torch.Tensor
        The site's encoded rows (the whole training set; canaries are not rows).
    coordinates : torch.Tensor
        j_c for every canary (the scorer never sees the coins).
    sample_rate : float
        q.
    max_grad_norm : float
        C.
    seed : int
        Seeds the model's own randomness when computing ĝ_t (on a forked RNG, so
        the mechanism's random stream is untouched).
    expected_batch : float, optional
        The divisor ``train_dp`` was given (the run's public
        :attr:`~shared.config.RunSettings.expected_batch`); ``None`` when it was given
        none and divided by round(q·n).
    """

    def __init__(
        self,
        family: GeneratorFamily,
        site_rows: torch.Tensor,
        coordinates: torch.Tensor,
        *,
        sample_rate: float,
        max_grad_norm: float,
        seed: int,
        expected_batch: float | None = None,
    ) -> None:
        # A private copy: the trained module carries hooks during training.
        self.module = copy.deepcopy(family.private_module())
        self.criterion = family.criterion()
        # Linear-only models: one batched pass with fused per-row clipping (the
        # site's own clipping code) instead of a vmap of per-row gradients.
        self._clipper = (
            fused.FusedClipper(self.module, max_grad_norm=max_grad_norm)
            if fused.supports(self.module)
            else None
        )
        self._row_losses = family.criterion()
        setattr(self._row_losses, "reduction", "none")  # noqa: B010 - per-row losses
        self.rows = site_rows
        self.coordinates = coordinates
        # The divisor train_dp used, computed the same way.
        self.batch = step_divisor(expected_batch, sample_rate, len(site_rows))
        self.sample_rate, self.max_grad_norm, self.seed = sample_rate, max_grad_norm, seed
        self.scores = torch.zeros(len(coordinates), dtype=torch.float64)
        self.steps = 0
        self._theta: dict[str, torch.Tensor] = {}

    def begin(self, module: nn.Module) -> None:
        """Record θ_0 of the next training call (the weights it starts from)."""
        self._theta = {n: p.detach().clone() for n, p in module.named_parameters()}

    def expected_rows_sum(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """q · Σ_i clip_C(∇ℓ_i(θ)) over all site rows, flattened (what ĝ·B is)."""
        if self._clipper is None:
            return self.sample_rate * self.clipped_sum_vmap(theta)
        names = list(theta)
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                p.copy_(theta[name])
        total = torch.zeros(sum(theta[n].numel() for n in names), dtype=torch.float64)
        params = dict(self.module.named_parameters())
        self.module.train()
        with torch.enable_grad():
            for chunk in torch.split(self.rows, CHUNK_ROWS):
                self._clipper.clipped_sum(self._row_losses(self.module(chunk), chunk))
                total += _flat_grad(params, names).double()
        return self.sample_rate * total

    def clipped_sum_vmap(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_i clip_C(∇ℓ_i(θ)) over all site rows from per-row gradients (any model)."""
        module, criterion = self.module, self.criterion

        def loss(params: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            x = row.unsqueeze(0)
            out: torch.Tensor = criterion(functional_call(module, params, (x,)), x)
            return out

        names = list(theta)
        per_row = vmap(grad(loss), in_dims=(None, 0), randomness="different")
        total = torch.zeros(sum(theta[n].numel() for n in names), dtype=torch.float64)
        for chunk in torch.split(self.rows, CHUNK_ROWS):
            g = per_row(theta, chunk)
            flat = torch.cat([g[n].reshape(len(chunk), -1) for n in names], dim=1)
            norms = flat.norm(dim=1, keepdim=True)
            # Opacus's clip coefficient, the same as client.fused's.
            total += (flat * (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)).sum(0).double()
        return total

    def observe(self, module: nn.Module) -> None:
        """Score one step: ``module.grad`` is g_t (computed at θ_t), its weights θ_{t+1}."""
        names = list(self._theta)
        params = dict(module.named_parameters())
        released = _flat_grad(params, names)
        # A forked RNG: the scorer's draws (the model's own noise) must neither
        # disturb nor be coupled with the mechanism's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.steps)
            expected = self.expected_rows_sum(self._theta)
        residual = released.double()[self.coordinates] * self.batch - expected[self.coordinates]
        self.scores += residual / self.max_grad_norm
        self.steps += 1
        self._theta = {n: p.detach().clone() for n, p in params.items()}
