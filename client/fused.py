"""Fused per-row gradient clipping for ``nn.Linear``-only models, in one backward pass.

For a linear layer ``z = a Wᵀ + b`` applied to a batch of rows, row i's gradient
is the outer product ``g_i a_iᵀ`` (and ``g_i`` for the bias), where ``g_i`` is
the gradient of row i's loss with respect to ``z_i``. Its squared norm is
therefore ``‖g_i‖²·‖a_i‖² + ‖g_i‖²`` without ever forming it (Goodfellow 2015;
"ghost clipping", Li et al. 2022), and the clipped sum ``Σ_i c_i g_i a_iᵀ`` is
one matrix product ``(c ⊙ G)ᵀ A``. Computing both from the same backward pass is
the "book-keeping" trick of Bu et al., "Differentially Private Optimization on
Large Model at Small Cost" (ICML 2023): Opacus's ghost clipping instead runs a
second backward pass with the loss reweighted by ``c``.

The result is exactly the clipped gradient sum that Opacus computes (same clip
coefficient ``min(1, C / (‖∇_i‖ + 1e-6))``); the noise comes from Opacus's own
``_generate_noise`` (including its secure mode), so the mechanism, and therefore
the accounting, is the Sampled Gaussian Mechanism that the ledger charges.

It applies only when every trainable parameter belongs to an ``nn.Linear`` that
sees 2-D inputs and runs once per forward pass; :func:`supports` checks the
first, :meth:`FusedClipper.clipped_sum` the rest (and refuses otherwise).
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from client.errors import TrainingError


def supports(module: nn.Module) -> bool:
    """Whether every trainable parameter of ``module`` belongs to an ``nn.Linear``."""
    linear_params = {
        id(p) for m in module.modules() if isinstance(m, nn.Linear) for p in m.parameters()
    }
    return all(id(p) in linear_params for p in module.parameters() if p.requires_grad)


class FusedClipper:
    """Hooks on a module's Linear layers that produce clipped, noised gradient sums.

    Parameters
    ----------
    module : nn.Module
        The private module; see :func:`supports`.
    max_grad_norm : float
        C: per-row L2 bound on the gradient over all parameters together.
    """

    def __init__(self, module: nn.Module, *, max_grad_norm: float) -> None:
        if not supports(module):
            raise TrainingError(
                "fused clipping needs a model whose trainable layers are all nn.Linear; "
                "use Opacus ghost clipping for this model"
            )
        self.max_grad_norm = max_grad_norm
        self.linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        self.params = [p for m in self.linears for p in m.parameters() if p.requires_grad]
        self._seen: dict[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]] = {
            m: [] for m in self.linears
        }
        self._handles = [m.register_forward_hook(self._capture) for m in self.linears]

    def _capture(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if layer.training and torch.is_grad_enabled():
            self._seen[layer].append((inputs[0].detach(), output))  # type: ignore[index]

    def clipped_sum(self, loss_rows: torch.Tensor) -> torch.Tensor:
        """Set each parameter's ``.grad`` to Σ_i clip_C(∇ loss_i); return the per-row norms.

        Call once after each forward pass with the per-row losses of that pass.
        """
        captured = [self._seen[m] for m in self.linears]
        for m in self.linears:
            self._seen[m] = []
        if any(len(c) != 1 for c in captured):
            raise TrainingError(
                "fused clipping needs each Linear layer to run exactly once per forward pass; "
                "use Opacus ghost clipping for this model"
            )
        acts = [c[0][0] for c in captured]
        outs = [c[0][1] for c in captured]
        if any(a.dim() != 2 for a in acts):
            raise TrainingError("fused clipping needs 2-D (rows × features) layer inputs")
        grads = torch.autograd.grad(loss_rows.sum(), outs, allow_unused=True)
        gs = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads, strict=True)]
        norm_sq = torch.zeros(loss_rows.shape[0], device=loss_rows.device, dtype=loss_rows.dtype)
        for layer, a, g in zip(self.linears, acts, gs, strict=True):
            g_sq = g.pow(2).sum(1)
            if layer.weight.requires_grad:
                norm_sq = norm_sq + g_sq * a.pow(2).sum(1)
            if layer.bias is not None and layer.bias.requires_grad:
                norm_sq = norm_sq + g_sq
        norms = norm_sq.sqrt()
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for layer, a, g in zip(self.linears, acts, gs, strict=True):
            gc = g * coef.unsqueeze(1)
            if layer.weight.requires_grad:
                layer.weight.grad = gc.t() @ a
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.grad = gc.sum(0)
        return norms

    def zero_sum(self) -> None:
        """The clipped sum of an empty batch: zero gradients (noise is still added)."""
        for m in self.linears:
            self._seen[m] = []
        for p in self.params:
            p.grad = torch.zeros_like(p)

    def add_noise_and_average(
        self,
        *,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: torch.Generator | None,
        secure_mode: bool,
    ) -> None:
        """Add N(0, σ²C²) to each summed gradient and divide by the expected batch (rows)."""
        std = noise_multiplier * self.max_grad_norm
        for p in self.params:
            if p.grad is None:  # pragma: no cover - clipped_sum/zero_sum always set it
                p.grad = torch.zeros_like(p)
            noise = _generate_noise(std, p.grad, generator=generator, secure_mode=secure_mode)
            p.grad = (p.grad + noise) / expected_batch_size

    def close(self) -> None:
        """Remove the hooks (the module is then a plain module again)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
