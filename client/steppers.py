"""The two per-row clipping implementations behind :func:`client.training.train_dp`.

Both produce the same DP-SGD step: the sum of per-row gradients clipped to C, plus
Gaussian noise N(0, σ²C²) from Opacus, divided by the expected batch (a site's public divisor).

FedProx (Li et al., MLSys 2020) adds μ/2‖w − w_global‖² to the local objective. Its
gradient μ(w − w_global) depends on no row, so both steppers add it to the already
clipped and noised gradient, just before the optimiser step: post-processing of the
DP output, at no privacy cost and with an unchanged ledger charge. Putting it into
each row's loss instead would make it part of every per-row gradient, where it
would be clipped with the data term and eat the clip budget C (far from the global
weights a row's gradient would be mostly proximal term), and its weight would
vary with the random Poisson batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client import fused
from client.errors import TrainingError
from shared.models.base import GeneratorFamily


def clipping_mode(clipping: str, module: nn.Module) -> str:
    if clipping not in ("auto", "fused", "ghost"):
        raise TrainingError(f"clipping must be 'auto', 'fused' or 'ghost', got {clipping!r}")
    if clipping == "auto":
        return "fused" if fused.supports(module) else "ghost"
    return clipping


#: Audit-only hook (the empirical privacy audit's gradient canaries): called at every
#: step with each parameter's name and the tensor holding its clipped gradient sum,
#: after clipping and before Opacus adds the noise; it may add to those sums in place.
#: Sites never pass one; without it a step is exactly the production step.
ClippedSumHook = Callable[[dict[str, torch.Tensor]], None]


class Stepper(Protocol):
    def step(self, batch: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StepConfig:
    """The public parameters of one DP-SGD step, shared by both implementations.

    ``noise_multiplier`` is σ (noise std in units of the clip norm C),
    ``max_grad_norm`` is C, ``expected_batch_size`` the divisor of the noisy sum (rows;
    at a site the public :attr:`shared.config_site.TrainSettings.expected_batch`).
    """

    n: int
    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: float
    learning_rate: float
    noise_generator: torch.Generator
    secure_mode: bool
    #: μ of the FedProx term (0: none); the anchor is the weights the steppers start from.
    proximal_mu: float = 0.0


class Proximal:
    """Adds μ(w − w_global) to each parameter's (noised) gradient; a no-op for μ = 0."""

    def __init__(self, params: list[nn.Parameter], mu: float) -> None:
        self.mu = mu
        self.pairs = [(p, p.detach().clone()) for p in params] if mu > 0 else []

    def add_to_grads(self) -> None:
        with torch.no_grad():
            for p, anchor in self.pairs:
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchor, alpha=self.mu)


class FusedStepper:
    """One backward pass: fused per-row clipping (:mod:`client.fused`), Opacus noise."""

    def __init__(
        self, family: GeneratorFamily, cfg: StepConfig, audit_hook: ClippedSumHook | None = None
    ) -> None:
        self.module = family.private_module()
        self.criterion = family.criterion()
        setattr(self.criterion, "reduction", "none")  # noqa: B010 - per-row losses
        self.clipper = fused.FusedClipper(self.module, max_grad_norm=cfg.max_grad_norm)
        self.optimizer = torch.optim.Adam(self.clipper.params, lr=cfg.learning_rate)
        self.proximal = Proximal(self.clipper.params, cfg.proximal_mu)
        self.cfg = cfg
        self.audit_hook = audit_hook

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        # Cleared before, not after, the step: an observer (the audit) reads the
        # released gradient in ``.grad`` after it.
        self.optimizer.zero_grad(set_to_none=True)
        if batch.shape[0] == 0:
            # Noise-only step: the clipped sum of no rows is zero; the noise is not.
            self.clipper.zero_sum()
            loss = torch.zeros(())
        else:
            rows_loss = self.criterion(self.module(batch), batch)
            self.clipper.clipped_sum(rows_loss)
            loss = rows_loss.detach().mean()
        if self.audit_hook is not None:
            self.audit_hook(
                {n: p.grad for n, p in self.module.named_parameters() if p.grad is not None}
            )
        self.clipper.add_noise_and_average(
            noise_multiplier=self.cfg.noise_multiplier,
            expected_batch_size=self.cfg.expected_batch_size,
            generator=self.cfg.noise_generator,
            secure_mode=self.cfg.secure_mode,
        )
        self.proximal.add_to_grads()  # after the noise: see the module docstring
        self.optimizer.step()
        return loss

    def close(self) -> None:
        self.clipper.close()


class GhostStepper:
    """Opacus ghost clipping (two backward passes) for models fused clipping cannot take."""

    def __init__(
        self, family: GeneratorFamily, cfg: StepConfig, audit_hook: ClippedSumHook | None = None
    ) -> None:
        module = family.private_module()
        self.proximal = Proximal(
            [p for p in module.parameters() if p.requires_grad], cfg.proximal_mu
        )
        engine = PrivacyEngine(accountant="rdp", secure_mode=cfg.secure_mode)
        # Sampling IS Poisson, at exactly q: the caller draws every batch with
        # client.sampling.PoissonBatches and the site's ledger accounts that. Opacus's
        # own Poisson loader is off only because it is never iterated (it would also
        # round q to 1 / len(loader)); Opacus needs a loader here just to read n.
        shape_only = DataLoader(
            TensorDataset(torch.empty(cfg.n, 0)), batch_size=max(1, round(cfg.expected_batch_size))
        )
        self.private, self.opt, self.crit, _ = engine.make_private(
            module=module,
            optimizer=torch.optim.Adam(module.parameters(), lr=cfg.learning_rate),
            data_loader=shape_only,
            criterion=family.criterion(),
            noise_multiplier=cfg.noise_multiplier,
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=False,
            grad_sample_mode="ghost",
            noise_generator=None if cfg.secure_mode else cfg.noise_generator,
        )
        self.opt.expected_batch_size = cfg.expected_batch_size
        if audit_hook is not None:
            self._hook_after_accumulate(module, audit_hook)

    def _hook_after_accumulate(self, module: nn.Module, hook: ClippedSumHook) -> None:
        # Opacus's ghost-clipping optimiser holds the clipped sum in ``summed_grad``
        # between ``accumulate()`` and ``add_noise()``; wrapping this one instance's
        # ``accumulate`` reaches that point without forking the optimiser.
        names = {id(p): n for n, p in module.named_parameters()}
        accumulate = self.opt.accumulate

        def accumulate_then_hook() -> None:
            accumulate()
            hook({names[id(p)]: p.summed_grad for p in self.opt.params})

        setattr(self.opt, "accumulate", accumulate_then_hook)  # noqa: B010

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        if batch.shape[0] == 0:
            # Noise-only step: a zero-weighted dummy row gives zero clipped gradients.
            dummy = torch.zeros(1, batch.shape[1], device=batch.device)
            loss = self.crit(self.private(dummy), dummy) * 0.0
        else:
            loss = self.crit(self.private(batch), batch)
        loss.backward()
        # DPOptimizer.step() is pre_step() (clip, noise, scale into .grad) and then the
        # original optimiser's step; split so the proximal term joins after the noise.
        if self.opt.pre_step():
            self.proximal.add_to_grads()
            self.opt.original_optimizer.step()
        out: torch.Tensor = loss.detach()
        return out

    def close(self) -> None:
        unwrap(self.private)


def unwrap(private: nn.Module) -> None:
    """Remove Opacus hooks so the family's module can be reused or saved cleanly."""
    remove = getattr(private, "_close", None)
    if callable(remove):
        remove()
