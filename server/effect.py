"""The coordinator's DP effect calibration: sum the sites' noisy AIPW sums, shift the offsets.

Runs once, after the last round, when the generator is ``staged`` and
``effect-budget-fraction`` is above 0 (:mod:`shared.effect` explains the estimate
and its sensitivity). The request carries the final global weights, so every site
scores its rows with the model that is released. Each site replies with its own
noisy ``(Σ φ, w·n_a, n)`` (charged to its ledger first, :mod:`client.effect`); the
server sums them, divides, and moves the treated arms' outcome offsets so that
the generator's own effect equals the estimate
(:func:`shared.models.staged_effect.calibrate_effect`), and the propensity head's
logits so that its treatment shares equal the released ones
(:func:`~shared.models.staged_effect.calibrate_treatment`): post-processing.

The estimate and the stage's facts are written to ``effect.json`` in the output
folder, so a coordinator that restarts before the release reuses them instead of
asking (and charging) the sites again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, RecordDict
from flwr.serverapp import Grid

from server.errors import CheckpointError
from server.oneshot import (
    collect_releases,
    load_stage,
    parse_release_reply,
    record_sites,
    save_stage,
    sites_sent,
)
from shared import keys
from shared.config import RunSettings
from shared.effect import EffectRequest, effect_from_sums, effect_length, effect_sensitivity
from shared.models import GeneratorFamily
from shared.models.staged_effect import (
    calibrate_effect,
    calibrate_treatment,
    check_calibratable,
)

log = logging.getLogger("fedsynth.server")
EFFECT_FILE = "effect.json"


def effect_request(family: GeneratorFamily, settings: RunSettings) -> EffectRequest:
    """What every site is asked for: σ_e, the arms, the ledger round after the last one."""
    return EffectRequest(
        noise_multiplier=settings.effect_noise_multiplier(),
        arms=check_calibratable(family),
        ledger_round=settings.rounds + 1,
        schema_fingerprint=family.schema.fingerprint(),
        model=settings.model,
        accountant=settings.accountant,
    )


def apply_effect(
    family: GeneratorFamily, total: np.ndarray, settings: RunSettings, sites_sent: list[str]
) -> dict[str, Any]:
    """Estimate ψ from the summed noisy vector, calibrate ``family``; return the public facts."""
    arms = check_calibratable(family)
    estimate = effect_from_sums(total, arms)
    shift = calibrate_effect(family, estimate.psi, seed=settings.seed)
    outcome = family.schema.column(family.schema.roles["outcome"])
    half_range = (outcome.maximum - outcome.minimum) / 2.0  # encoded units -> column units
    sigma_e = settings.effect_noise_multiplier()
    facts: dict[str, Any] = {
        "budget_fraction": settings.effect_budget_fraction,
        "noise_multiplier": sigma_e,
        "l2_sensitivity": effect_sensitivity(arms),
        "noise_std_per_coordinate": sigma_e * effect_sensitivity(arms),
        "estimate": [float(p) * half_range for p in estimate.psi],
        "generator_effect_before": [b * half_range for b in shift["before"]],
        "generator_effect_after": [a * half_range for a in shift["after"]],
        "offset_shift_encoded": shift["shift"],
        "units": f"{outcome.name} (column units), treated arm minus reference arm",
        "sites_sent": sites_sent,
        "per_site_sums_seen_by_server": True,
    }
    if estimate.shares is None:  # saved before the arm counts were released
        log.warning("effect calibration: the saved vector has no arm counts; shares unchanged")
        return facts
    shares = calibrate_treatment(family, estimate.shares, seed=settings.seed)
    return {
        **facts,
        "treatment_shares": estimate.shares.tolist(),
        "generator_shares_before": shares["before"],
        "generator_shares_after": shares["after"],
    }


def fit_effect(
    grid: Grid,
    settings: RunSettings,
    family: GeneratorFamily,
    state: dict[str, Any],
    sites: dict[str, dict[str, Any]],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """Run the effect calibration (or reuse this run's saved estimate) on ``family``.

    ``family`` must hold the final weights ``state``. Updates ``sites`` with each
    site's cumulative accounting after its release.

    Raises
    ------
    RoundFailedError
        Fewer than ``min_sites`` sites sent their sums: nothing was changed.
    """
    saved = Path(settings.out_dir) / EFFECT_FILE
    if saved.exists():
        return _reuse(saved, family, settings, sites, identity)
    request = effect_request(family, settings)
    arms = request.arms
    config = cast("dict[str, ConfigRecordValues]", request.to_config())
    parsed, total = collect_releases(
        grid,
        settings,
        stage="effect calibration",
        message_type=keys.EFFECT_CALIBRATION,
        content=lambda: RecordDict(
            {keys.GLOBAL_ARRAYS: ArrayRecord(state), keys.EFFECT_CONFIG: ConfigRecord(config)}
        ),
        parse=lambda rep: parse_release_reply(
            rep,
            fields=keys.EFFECT_REPLY_FIELDS,
            record=(keys.EFFECT_ARRAYS, keys.EFFECT_SUMS),
            shape=(effect_length(arms),),
        ),
        fix="use --effect-budget-fraction 0",
    )
    record_sites(parsed, sites, after_training=True)
    sent = sites_sent(parsed)
    info = apply_effect(family, total, settings, sent)
    save_stage(saved, {"identity": identity, "info": info, "total": total.tolist(), "sites": sites})
    log.info(
        "effect calibration: estimate %s from %d site(s) (σ_e = %.4f); generator effect %s -> %s",
        [round(e, 3) for e in info["estimate"]],
        len(sent),
        info["noise_multiplier"],
        [round(e, 3) for e in info["generator_effect_before"]],
        [round(e, 3) for e in info["generator_effect_after"]],
    )
    return info


def _reuse(
    path: Path,
    family: GeneratorFamily,
    settings: RunSettings,
    sites: dict[str, dict[str, Any]],
    identity: dict[str, Any],
) -> dict[str, Any]:
    doc = load_stage(path, identity, ("total", "info", "sites"))
    try:
        total = np.asarray(doc["total"], dtype=np.float64)
        sent, saved_sites = list(doc["info"]["sites_sent"]), dict(doc["sites"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); restore it from backup") from None
    sites.update(saved_sites)
    log.info("effect calibration: reusing the estimate already released for this run (%s)", path)
    return apply_effect(family, total, settings, sent)
