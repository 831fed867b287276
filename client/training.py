"""Local DP-SGD training of a generator family with Opacus.

One call of :func:`train_dp` runs exactly ``steps`` steps of DP-SGD:

* rows are drawn by Poisson sampling at rate q (``DPDataLoader``), which is the
  sampling the RDP/PRV accountants assume;
* each row's gradient is clipped to C and Gaussian noise N(0, σ²C²) is added to
  the sum (Opacus ``DPOptimizer``), using ghost clipping when the family allows;
* an empty Poisson batch still performs a noise-only step: skipping it would
  reveal that the batch was empty, and the accountant already counts it.

The caller (the ClientApp) is responsible for the ledger: it checks the budget
before calling and records the steps after. :func:`train_plain` is the same loop
without DP, for benchmarks and baselines only; sites never use it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.errors import TrainingError
from shared.models.base import GeneratorFamily

GRAD_SAMPLE_MODE = "ghost"

# Opacus/PyTorch warnings that carry no information for a site operator: ghost
# clipping's backward hooks fire on module outputs by design, and secure_mode
# is reported in the privacy report instead of warned about on every round.
for _pattern in (
    ".*Full backward hook is firing.*",
    ".*Secure RNG turned off.*",
    ".*Optimal order is the largest alpha.*",
):
    warnings.filterwarnings("ignore", message=_pattern)


@dataclass(frozen=True)
class TrainStats:
    """What a local training call did (kept at the site; not sent)."""

    steps: int
    empty_batches: int
    mean_batch: float
    last_loss: float
    seconds: float


def _check_module(module: nn.Module) -> None:
    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise TrainingError(
            f"the generator has layers Opacus cannot train privately: {errors[0]}. "
            "Remove BatchNorm (it mixes rows) or use a supported layer."
        )


def _cycle(loader: DataLoader[tuple[torch.Tensor, ...]]) -> Iterator[torch.Tensor]:
    while True:
        for (batch,) in loader:
            yield batch


def train_dp(
    family: GeneratorFamily,
    data: torch.Tensor,
    *,
    steps: int,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    learning_rate: float,
    device: torch.device,
    seed: int,
    secure_mode: bool = False,
    on_step: Callable[[nn.Module], None] | None = None,
) -> TrainStats:
    """Run ``steps`` DP-SGD steps on ``family.private_module()`` in place.

    Parameters
    ----------
    family : GeneratorFamily
        Model to train; its weights are updated in place.
    data : torch.Tensor
        Encoded rows of the site's table (float32, CPU).
    steps : int
        Number of DP-SGD steps (each one Poisson-sampled batch).
    noise_multiplier : float
        σ: noise std as a multiple of the clip norm C.
    max_grad_norm : float
        C: per-row L2 gradient bound.
    sample_rate : float
        q: each row joins each batch independently with probability q.
    learning_rate : float
        Adam step size.
    device : torch.device
        Where to train.
    seed : int
        Seeds sampling and noise (ignored for noise when ``secure_mode``).
    secure_mode : bool
        Use Opacus's cryptographically secure noise (slower; recommended in deployment).
    on_step : callable, optional
        Observer called after every DP-SGD step with the (unwrapped) module: its
        weights are the new iterate and each parameter's ``.grad`` holds the step's
        clipped, noised, averaged gradient (what the DP guarantee covers). For the
        empirical audit; it must not modify the module. Sites never pass one.

    Returns
    -------
    TrainStats
    """
    if steps < 1:
        raise TrainingError(f"steps must be >= 1, got {steps}")
    if len(data) == 0:
        raise TrainingError("the site's table has no rows; nothing to train on")
    module = family.private_module()
    _check_module(module)
    torch.manual_seed(seed)
    module.to(device).train()
    criterion = family.criterion()
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    loader = DataLoader(TensorDataset(data), batch_size=max(1, round(sample_rate * len(data))))
    engine = PrivacyEngine(accountant="rdp", secure_mode=secure_mode)
    private, dp_opt, dp_crit, dp_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=loader,
        criterion=criterion,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=GRAD_SAMPLE_MODE,
    )
    if abs(dp_loader.sample_rate - sample_rate) > 1e-9 * max(1.0, sample_rate):
        # Opacus derives q from batch_size / len(data); force the planned q exactly.
        dp_loader.batch_sampler.sample_rate = sample_rate
        dp_loader.sample_rate = sample_rate
    dummy = torch.zeros(1, data.shape[1], device=device)
    start, empty, rows, loss_value = time.perf_counter(), 0, 0, float("nan")
    batches = _cycle(dp_loader)
    for _ in range(steps):
        batch = next(batches).to(device, non_blocking=True)
        dp_opt.zero_grad(set_to_none=True)
        if batch.shape[0] == 0:
            # Noise-only step: a zero-weighted dummy row gives zero clipped gradients.
            empty += 1
            loss = dp_crit(private(dummy), dummy) * 0.0
        else:
            rows += batch.shape[0]
            loss = dp_crit(private(batch), batch)
        loss.backward()
        dp_opt.step()
        loss_value = float(loss.item())
        if on_step is not None:
            on_step(module)
    seconds = time.perf_counter() - start
    _unwrap(private)
    return TrainStats(steps, empty, rows / steps, loss_value, seconds)


def _unwrap(private: nn.Module) -> None:
    """Remove Opacus hooks so the family's module can be reused or saved cleanly."""
    remove = getattr(private, "_close", None)
    if callable(remove):
        remove()


def train_plain(
    family: GeneratorFamily,
    data: torch.Tensor,
    *,
    steps: int,
    sample_rate: float,
    learning_rate: float,
    device: torch.device,
    seed: int,
) -> TrainStats:
    """Non-private baseline: same model, batch size and optimiser, no clipping or noise.

    For benchmarks and pooled baselines only. Never used on a site's data in a run.
    """
    torch.manual_seed(seed)
    module = family.private_module().to(device).train()
    criterion = family.criterion()
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    batch_size = max(1, round(sample_rate * len(data)))
    gen = torch.Generator().manual_seed(seed)
    start, loss_value = time.perf_counter(), float("nan")
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        batch = data[idx].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(module(batch), batch)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.item())
    return TrainStats(steps, 0, float(batch_size), loss_value, time.perf_counter() - start)
