"""The coordinator's side of a release family's fit: one noisy release per stage.

A release family (``dp-marginal``) has no DP-SGD rounds. For each stage ``s`` the
server sends the model as fitted so far and a
:class:`shared.release_request.ReleaseRequest` (σ_s, Δ_s, length); each site
replies with its statistics plus its own Gaussian noise (charged to its ledger
first, :mod:`client.release_stage`); the server sums the vectors and fits the
stage (:meth:`shared.models.release.ReleaseFamily.fit_release`), which is
post-processing. The stages' σ_s = σ/√ρ_s spend exactly ε per site together.

Without secure aggregation the server sees each site's noisy vector (noise
placement ``local``), and the sum of n vectors carries √n times the noise of one
central release. Under secure aggregation (:mod:`server.release_secure`) the server
learns only the sum: with placement ``local`` each share still carries the full
noise; with ``distributed`` the noise is split over K = ``min_sites`` shares, so
the sum carries the noise of one central release at the same ε per site. The
privacy report says which.

Every fitted stage's summed vector is saved to ``release_stages.json`` in the
output folder, so a coordinator that restarts refits the stages already paid for
from the saved sums instead of asking (and charging) the sites again.
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
from server.plan import check_plan, release_plan
from server.release_secure import secure_release
from shared import keys
from shared.config import RunSettings
from shared.distdp.release import release_grid_bits
from shared.models.release import ReleaseFamily, release_stage_noise
from shared.release_request import ReleaseRequest

log = logging.getLogger("fedsynth.server")
RELEASE_FILE = "release_stages.json"


def stage_request(family: ReleaseFamily, settings: RunSettings, stage: int) -> ReleaseRequest:
    """What every site is asked for in ``stage`` (public: schema, settings, fit so far)."""
    sigma = release_stage_noise(settings)[stage]
    sensitivity, length = family.release_sensitivity(stage), family.release_length(stage)
    noise_sites = settings.min_sites if settings.noise_placement == "distributed" else 1
    bits = 0
    if settings.secure_aggregation:
        bits = release_grid_bits(
            noise_multiplier=sigma, sensitivity=sensitivity, noise_sites=noise_sites, length=length
        )
    return ReleaseRequest(
        stage=stage,
        noise_multiplier=sigma,
        sensitivity=sensitivity,
        length=length,
        ledger_round=stage + 1,
        schema_fingerprint=family.schema.fingerprint(),
        model=settings.model,
        accountant=settings.accountant,
        noise_sites=noise_sites,
        grid_bits=bits,
    )


def fit_release_stages(
    grid: Grid,
    settings: RunSettings,
    family: ReleaseFamily,
    sites: dict[str, dict[str, Any]],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """Fit every stage of ``family`` from the sites' releases (or from this run's saved sums).

    Updates ``sites`` with each site's cumulative accounting after its release.

    Returns
    -------
    dict
        Public facts of the stages for the report.

    Raises
    ------
    RoundFailedError
        Fewer than ``min_sites`` sites sent a stage: that stage and later ones are not fitted.
    CheckpointError
        ``release_stages.json`` is damaged or was written by another run.
    """
    path = Path(settings.out_dir) / RELEASE_FILE
    stages: list[dict[str, Any]] = []
    if path.exists():
        doc = load_stage(path, identity, ("stages", "sites"))
        stages, saved_sites = list(doc["stages"]), dict(doc["sites"])
        sites.update(saved_sites)
    for stage in range(len(family.release_shares())):
        if stage < len(stages):
            _refit(path, family, stages[stage], stage)
            continue
        if stage == len(stages):  # the saved stages refitted: ask before the first charge
            fingerprint = family.schema.fingerprint()
            check_plan(grid, settings, release_plan(settings, fingerprint, done=stage))
        request = stage_request(family, settings, stage)
        secure: dict[str, Any] = {}
        if settings.secure_aggregation:
            parsed, sent, total, info = secure_release(grid, settings, family, request)
            secure = {"secure_aggregation": info.as_dict(), "noise_sites": request.noise_sites}
        else:
            parsed, total = _collect(grid, settings, family, request)
            sent = sites_sent(parsed)
        # n vectors, each with noise std σ_sΔ_s/√K: the sum's std is σ_sΔ_s·√(n/K).
        noise_std = request.sum_std(len(sent))
        family.fit_release(total, stage=stage, noise_std=noise_std)
        record_sites(parsed, sites)
        stages.append(
            {
                "stage": stage,
                "budget_share": family.release_shares()[stage],
                "noise_multiplier": request.noise_multiplier,
                "l2_sensitivity": request.sensitivity,
                "length": request.length,
                "noise_std_of_sum": noise_std,
                "sites_sent": sent,
                **secure,
                "total": total.tolist(),
            }
        )
        save_stage(path, {"identity": identity, "stages": stages, "sites": sites})
        log.info(
            "release stage %d: fitted from %d site(s), %d statistics, σ_s = %.4f, Δ_s = %.3f",
            stage,
            len(sent),
            request.length,
            request.noise_multiplier,
            request.sensitivity,
        )
    return {
        "release_noise_multiplier": settings.release_noise_multiplier(),
        "stages": [{k: v for k, v in s.items() if k != "total"} for s in stages],
        "per_site_statistics_seen_by_server": not settings.secure_aggregation,
        "noise_placement": settings.noise_placement,
        "saved_sums": RELEASE_FILE,
    }


def _collect(
    grid: Grid, settings: RunSettings, family: ReleaseFamily, request: ReleaseRequest
) -> tuple[list[Any], np.ndarray]:
    config = cast("dict[str, ConfigRecordValues]", request.to_config())
    state = ArrayRecord(family.state_dict())
    return collect_releases(
        grid,
        settings,
        stage=f"release stage {request.stage}",
        message_type=keys.RELEASE_STATISTICS,
        content=lambda: RecordDict(
            {keys.RELEASE_CONFIG: ConfigRecord(config), keys.GLOBAL_ARRAYS: state}
        ),
        parse=lambda rep: parse_release_reply(
            rep,
            fields=keys.RELEASE_REPLY_FIELDS,
            record=(keys.RELEASE_ARRAYS, keys.RELEASE_VALUES),
            shape=(request.length,),
        ),
        fix="lower --min-sites to the sites that can take part",
    )


def _refit(path: Path, family: ReleaseFamily, saved: dict[str, Any], stage: int) -> None:
    try:
        total = np.asarray(saved["total"], dtype=np.float64)
        noise_std = float(saved["noise_std_of_sum"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); restore it from backup") from None
    family.fit_release(total, stage=stage, noise_std=noise_std)  # ModelError on a wrong shape
    log.info("release stage %d: refitted from the sums already released for this run", stage)
