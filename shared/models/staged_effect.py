"""The staged generator's side of the DP effect calibration (:mod:`shared.effect`).

:func:`effect_sums` computes one site's ``(Σ φ_1, …, Σ φ_{A−1}, w·n_1, …, w·n_{A−1}, n)``
from its encoded rows with the released generator as the nuisance models; the
caller adds the noise. :func:`calibrate_effect` then moves the bias of each
treated arm's outcome offset ``g_a`` (the mean slot only) so that the
generator's own effect, averaged over covariates it draws itself, equals the
released estimate ψ_a, and :func:`calibrate_treatment` moves the propensity
head's logit biases so that the generator's treatment shares equal the released
ones. Both shifts are post-processing of DP outputs, saved in the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.effect import PROPENSITY_FLOOR, SCORE_CLIP, SHARE_WEIGHT
from shared.errors import ConfigError
from shared.models.base import GeneratorFamily
from shared.models.heads import zero_absent_values
from shared.models.staged import StagedGenerator, StagedModule

#: Covariate rows the server draws to measure the generator's own effect.
CALIBRATION_ROWS = 20_000


def _staged(family: GeneratorFamily) -> tuple[StagedGenerator, StagedModule]:
    if not isinstance(family, StagedGenerator) or not isinstance(family.module, StagedModule):
        raise ConfigError(
            f"effect calibration needs the 'staged' generator, not {family.name!r}; set "
            "--effect-budget-fraction 0 for other families"
        )
    return family, family.module


def check_calibratable(family: GeneratorFamily) -> int:
    """The treatment's arm count A, or a :class:`ConfigError` if the outcome does not fit.

    The calibration shifts a Gaussian mean, so the outcome must be one numeric value
    with no missing or atom mode (its span is then exactly ``[numeric]``).
    """
    staged, _ = _staged(family)
    outcome = family.schema.roles["outcome"]
    spans = staged.stage_spans[1]
    if len(spans) != 1 or spans[0].kind != "numeric":
        raise ConfigError(
            f"effect calibration needs a numeric outcome without missing values or atoms; "
            f"{outcome!r} is encoded as {[s.kind for s in spans]}. Set "
            "--effect-budget-fraction 0 for this schema."
        )
    t_spans = staged.stage_spans[0]
    if len(t_spans) != 1:
        raise ConfigError(f"the treatment must be one categorical span, got {len(t_spans)}")
    return t_spans[0].width


def _arm_means(module: StagedModule, cov: torch.Tensor, arms: int) -> torch.Tensor:
    """μ̂_a(x) for every arm a: the outcome head's mean slot, clamped like sampling."""
    out = []
    for a in range(arms):
        code = torch.zeros(cov.shape[0], arms, device=cov.device)
        code[:, a] = 1.0
        out.append(module.outcome(cov, code)[:, 0].clamp(-1.0, 1.0))
    return torch.stack(out, dim=1)


@torch.no_grad()
def effect_sums(family: GeneratorFamily, encoded: np.ndarray) -> np.ndarray:
    """One site's exact ``(Σ φ_1, …, Σ φ_{A−1}, w·n_1, …, w·n_{A−1}, n)`` (never sent bare).

    Parameters
    ----------
    family : GeneratorFamily
        The released staged generator (the global weights after the last round).
    encoded : numpy.ndarray
        The site's rows in ``family.transformer``'s encoding.
    """
    arms = check_calibratable(family)
    _, module = _staged(family)
    module.eval()
    device = next(module.parameters()).device
    x = torch.from_numpy(np.array(encoded, dtype=np.float32)).to(device)
    cov, t = module.part(x, "cov"), module.part(x, "treatment")
    y = module.part(x, "outcome")[:, 0]
    mu = _arm_means(module, cov, arms)
    e = torch.softmax(module.propensity(cov), dim=1).clamp(min=PROPENSITY_FLOOR)
    arm = t.argmax(dim=1, keepdim=True)
    weighted = ((y - mu.gather(1, arm)[:, 0]) / e.gather(1, arm)[:, 0]).unsqueeze(1)
    treated = (arm == torch.arange(1, arms, device=device)).float()  # (n, A - 1)
    control = (arm == 0).float()
    phi = mu[:, 1:] - mu[:, :1] + treated * weighted - control * weighted
    clipped = phi.clamp(-SCORE_CLIP, SCORE_CLIP).double().cpu().numpy()
    counts = SHARE_WEIGHT * treated.double().sum(dim=0).cpu().numpy()
    return np.concatenate([clipped.sum(axis=0), counts, [float(len(clipped))]])


def _drawn_covariates(family: GeneratorFamily, *, rows: int, seed: int) -> torch.Tensor:
    """Covariates the generator draws itself, in the encoder's form (public, seeded)."""
    staged, module = _staged(family)
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    cov_family = staged.cov_family
    return zero_absent_values(cov_family.transformer.spans, cov_family.sample_encoded(rows, gen))


def _effects_on(module: StagedModule, cov: torch.Tensor, arms: int) -> np.ndarray:
    mu = _arm_means(module, cov, arms)
    return (mu[:, 1:] - mu[:, :1]).mean(dim=0).double().cpu().numpy()


@torch.no_grad()
def model_effects(family: GeneratorFamily, *, rows: int, seed: int) -> np.ndarray:
    """The generator's own effect per treated arm: mean of μ̂_a − μ̂_0 over drawn covariates."""
    _, module = _staged(family)
    arms = check_calibratable(family)
    module.eval()
    return _effects_on(module, _drawn_covariates(family, rows=rows, seed=seed), arms)


@torch.no_grad()
def calibrate_effect(family: GeneratorFamily, psi: np.ndarray, *, seed: int) -> dict[str, Any]:
    """Shift each treated arm's offset so the generator's effect equals ``psi``.

    Parameters
    ----------
    family : GeneratorFamily
        The staged generator, changed in place.
    psi : numpy.ndarray
        ψ_a per treated arm, in the outcome's encoded units (:func:`shared.effect.effect_from_sums`).
    seed : int
        Seed of the covariate draw (public).

    Returns
    -------
    dict
        ``before`` and ``after`` (the generator's effect per arm, encoded units) and
        ``shift`` (what was added to each offset's mean bias).
    """
    _, module = _staged(family)
    arms = check_calibratable(family)
    module.eval()
    # The offsets do not touch the covariate stage, so one draw serves every pass.
    cov = _drawn_covariates(family, rows=CALIBRATION_ROWS, seed=seed)
    before = _effects_on(module, cov, arms)
    psi = np.asarray(psi, np.float64)
    if psi.shape != before.shape or not np.isfinite(psi).all():
        raise ConfigError(f"effect estimate of shape {psi.shape} does not fit {before.shape} arms")
    target = np.clip(psi, -2.0, 2.0)  # a difference of two values in [-1, 1]

    def move_offsets(step: np.ndarray) -> None:
        for a, delta in enumerate(step, start=1):
            offset: nn.Linear = module.outcome.linear[a]  # type: ignore[assignment]
            offset.bias[0] += float(delta)

    # μ̂ is clamped to [-1, 1], so one shift can fall short near the bounds.
    after, shift = _close_gap(
        target,
        before,
        passes=4,
        step=lambda t, now: t - now,
        apply=move_offsets,
        measure=lambda: _effects_on(module, cov, arms),
    )
    return {"before": before.tolist(), "after": after.tolist(), "shift": shift.tolist()}


def _close_gap(
    target: np.ndarray,
    start: np.ndarray,
    *,
    passes: int,
    step: Callable[[np.ndarray, np.ndarray], np.ndarray],
    apply: Callable[[np.ndarray], None],
    measure: Callable[[], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point passes over one public draw: apply ``step(target, now)`` and measure again.

    Stops after ``passes`` or once every coordinate is within 1e-4 of ``target``.
    Returns the last measurement and the summed steps.
    """
    shift, after = np.zeros_like(start), start
    for _ in range(passes):
        delta = step(target, after)
        apply(delta)
        shift = shift + delta
        after = measure()
        if np.abs(target - after).max() < 1e-4:
            break
    return after, shift


@torch.no_grad()
def model_shares(family: GeneratorFamily, cov: torch.Tensor) -> np.ndarray:
    """The generator's treatment share per arm: mean propensity over covariates ``cov``."""
    _, module = _staged(family)
    return torch.softmax(module.propensity(cov), dim=1).mean(dim=0).double().cpu().numpy()


@torch.no_grad()
def calibrate_treatment(
    family: GeneratorFamily, shares: np.ndarray, *, seed: int
) -> dict[str, Any]:
    """Shift the propensity head's logit biases so the generator's arm shares equal ``shares``.

    Parameters
    ----------
    family : GeneratorFamily
        The staged generator, changed in place.
    shares : numpy.ndarray
        The target share of every arm, reference first, positive and summing to 1
        (:class:`shared.effect.EffectEstimate`).
    seed : int
        Seed of the covariate draw (public).

    Returns
    -------
    dict
        ``before`` and ``after`` (the generator's share per arm) and ``shift`` (what
        was added to each arm's logit bias).
    """
    _, module = _staged(family)
    arms = check_calibratable(family)
    module.eval()
    target = np.asarray(shares, np.float64)
    if target.shape != (arms,) or not np.isfinite(target).all() or (target <= 0).any():
        raise ConfigError(f"treatment shares {target.tolist()} do not fit {arms} arms")
    cov = _drawn_covariates(family, rows=CALIBRATION_ROWS, seed=seed)
    bias: nn.Parameter = module.propensity.linear[0].bias  # type: ignore[assignment]
    before = model_shares(family, cov)

    def move_logits(step: np.ndarray) -> None:
        bias[:arms] += torch.as_tensor(step, dtype=bias.dtype, device=bias.device)

    # The mean of a softmax is not a softmax of means, so a log-ratio step is exact
    # only for constant logits.
    after, shift = _close_gap(
        target,
        before,
        passes=8,
        step=lambda t, now: np.log(t / now),
        apply=move_logits,
        measure=lambda: model_shares(family, cov),
    )
    return {"before": before.tolist(), "after": after.tolist(), "shift": shift.tolist()}
