"""Local DP-SGD training of a generator family with Opacus.

One call of :func:`train_dp` runs exactly ``steps`` steps of DP-SGD:

* rows are drawn by Poisson sampling at rate q (:class:`client.sampling.PoissonBatches`,
  vectorised), which is the sampling the RDP/PRV accountants assume;
* each row's gradient is clipped to C and Gaussian noise N(0, σ²C²) is added to
  the sum: by fused clipping (:mod:`client.fused`, one backward pass) when every
  trainable layer is ``nn.Linear``, else by Opacus ghost clipping;
* an empty Poisson batch still performs a noise-only step: skipping it would
  reveal that the batch was empty, and the accountant already counts it;
* a family may supply a :class:`shared.models.base.LocalLoop` (the GAN does):
  it adds data-independent rows to each batch and runs post-processing work (the
  generator's step) after it, under the contract stated there, so each step is
  still one Poisson-sampled Gaussian step on the private module.

The caller (the ClientApp) is responsible for the ledger: it checks the budget
before calling and records the steps after. :func:`train_plain` is the same loop
without DP, for benchmarks and baselines only; sites never use it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn

from client.errors import TrainingError
from client.randomness import RoundRandomness
from client.sampling import PoissonBatches, Rows
from client.steppers import (
    ClippedSumHook,
    FusedStepper,
    GhostStepper,
    StepConfig,
    Stepper,
    clipping_mode,
)
from shared.models.base import GeneratorFamily

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


def step_divisor(expected_batch: float | None, sample_rate: float, n: int) -> float:
    """The denominator of the averaged noisy gradient: the public one, or round(q·n) off-site."""
    if expected_batch is None:
        return float(max(1, round(sample_rate * n)))
    if not (math.isfinite(expected_batch) and expected_batch > 0):
        raise TrainingError(f"expected_batch must be positive, got {expected_batch}")
    return float(expected_batch)


def train_dp(
    family: GeneratorFamily,
    data: Rows,
    *,
    steps: int,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    learning_rate: float,
    device: torch.device,
    seed: int,
    secure_mode: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    progress_every: int = 50,
    clipping: str = "auto",
    on_step: Callable[[nn.Module], None] | None = None,
    audit_hook: ClippedSumHook | None = None,
    proximal_mu: float = 0.0,
    expected_batch: float | None = None,
) -> TrainStats:
    """Run ``steps`` DP-SGD steps on ``family.private_module()`` in place.

    Parameters
    ----------
    family : GeneratorFamily
        Model to train; its weights are updated in place.
    data : torch.Tensor or numpy.ndarray
        Encoded rows of the site's table (float32, CPU); a NumPy memmap keeps a
        large table on disk.
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
        Secret seed (up to :data:`client.randomness.SEED_BITS` bits), split into
        independent streams for sampling, noise and the model's own randomness
        (:class:`client.randomness.RoundRandomness`); sampling and noise ignore it
        under ``secure_mode``.
    secure_mode : bool
        Use Opacus's cryptographically secure noise and sampling (needs ``torchcsprng``).
    progress : callable, optional
        Called as ``progress(step, steps, loss)`` every ``progress_every`` steps and
        after the last (for site logs; the loss stays at the site).
    progress_every : int
        Steps between progress calls.
    clipping : {"auto", "fused", "ghost"}
        Per-row clipping implementation; both give the same clipped sum. "auto"
        takes fused clipping (one backward pass) when every trainable layer is
        ``nn.Linear``, else Opacus ghost clipping (two backward passes).
    on_step : callable, optional
        Observer called after every DP-SGD step with the (unwrapped) module: its
        weights are the new iterate and each parameter's ``.grad`` holds the step's
        clipped, noised, averaged gradient (what the DP guarantee covers). For the
        empirical audit; it must not modify the module. Sites never pass one.
    audit_hook : callable, optional
        Audit-only (:data:`client.steppers.ClippedSumHook`): may add gradient
        canaries to each step's clipped sum before the noise is added, so the
        canaries get exactly the noise the accountant assumes. Sites never pass one.
    proximal_mu : float
        μ of the FedProx term μ/2‖w − w₀‖², w₀ the weights on entry (the global model).
        Its gradient is added after clipping and noise (:mod:`client.steppers`), so
        the privacy cost of the steps does not depend on μ.
    expected_batch : float, optional
        Rows: the public divisor of each step's noisy gradient sum
        (:attr:`shared.config_site.TrainSettings.expected_batch`). A site always passes
        it, because its own q·n is private. None divides by round(q·n), for benchmarks
        and baselines whose row counts are no secret.

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
    rand = RoundRandomness.from_seed(seed, device)
    torch.manual_seed(rand.model_seed)  # the model's own randomness (the VAE's draws)
    module.to(device).train()
    n = int(data.shape[0])
    # Secure mode needs Opacus's CSPRNG (torchcsprng) for sampling and noise alike.
    secure_rng = PrivacyEngine(secure_mode=True).secure_rng if secure_mode else None
    mode = clipping_mode(clipping, module)
    cfg = StepConfig(
        n=n,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=step_divisor(expected_batch, sample_rate, n),
        learning_rate=learning_rate,
        noise_generator=secure_rng or rand.noise,
        secure_mode=secure_mode,
        proximal_mu=proximal_mu,
    )
    step_fn: Stepper = (FusedStepper if mode == "fused" else GhostStepper)(family, cfg, audit_hook)
    batches = PoissonBatches(data, sample_rate=sample_rate, generator=secure_rng or rand.sampling)
    # A family's loop (a GAN's fake rows and generator step) works around each step;
    # it keeps every sampled row once, so each step is still one Poisson-sampled
    # Gaussian step on the private module, which is what the ledger charges.
    loop = family.local_loop(learning_rate=learning_rate)
    start, empty, rows = time.perf_counter(), 0, 0
    loss = torch.zeros(())
    try:
        for step in range(steps):
            batch = batches.next_batch().to(device, non_blocking=True)
            empty += int(batch.shape[0] == 0)
            rows += batch.shape[0]
            loss = step_fn.step(batch if loop is None else loop.private_batch(batch))
            if loop is not None:
                loop.after_step()
            if on_step is not None:
                on_step(module)
            if progress is not None and ((step + 1) % progress_every == 0 or step + 1 == steps):
                progress(step + 1, steps, float(loss.item()))
    finally:
        step_fn.close()
    loss_value = float(loss.item())
    seconds = time.perf_counter() - start
    return TrainStats(steps, empty, rows / steps, loss_value, seconds)


def train_plain(
    family: GeneratorFamily,
    data: Rows,
    *,
    steps: int,
    sample_rate: float,
    learning_rate: float,
    device: torch.device,
    seed: int,
) -> TrainStats:
    """Non-private baseline: same model, Poisson batches and optimiser, no clipping or noise.

    For benchmarks and pooled baselines only. Never used on a site's data in a run.
    """
    rand = RoundRandomness.from_seed(seed, device)
    torch.manual_seed(rand.model_seed)
    module = family.private_module().to(device).train()
    criterion = family.criterion()
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    batches = PoissonBatches(data, sample_rate=sample_rate, generator=rand.sampling)
    loop = family.local_loop(learning_rate=learning_rate)
    start, rows = time.perf_counter(), 0
    loss = torch.zeros(())
    for _ in range(steps):
        batch = batches.next_batch().to(device, non_blocking=True)
        if batch.shape[0] == 0:
            continue
        rows += batch.shape[0]
        if loop is not None:
            batch = loop.private_batch(batch)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(module(batch), batch)
        loss.backward()
        optimizer.step()
        if loop is not None:
            loop.after_step()
    loss_value = float(loss.item())
    return TrainStats(steps, 0, rows / steps, loss_value, time.perf_counter() - start)
