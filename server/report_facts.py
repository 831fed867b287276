"""The privacy report's sections on secure aggregation, distributed noise and the DP encoder.

Each function turns the public run settings into the plain facts a site's privacy
officer reads: what the coordinator saw, what was charged, and what is trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared import keys
from shared.config import RunSettings
from shared.distdp.accounting import (
    accounting_multiplier,
    largest_tolerated_collusion,
)


def aggregation_text(settings: RunSettings) -> str:
    """One line for the report: how the server combined the updates (post-processing)."""
    agg = settings.aggregation
    base = "uniform mean Δ̄ of L2-clipped site updates"
    steps = {
        "fedavg": f"w += η·Δ̄ (FedAvg, η = {agg.learning_rate:g})",
        "fedavgm": f"server momentum (FedAvgM, η = {agg.learning_rate:g}, β = {agg.server_momentum:g})",
        "fedadam": (
            f"server Adam on Δ̄ (FedAdam, η = {agg.learning_rate:g}, β1 = {agg.server_momentum:g}, "
            f"β2 = {agg.server_beta2:g}, τ = {agg.server_tau:g})"
        ),
        "fedprox": (
            f"w += η·Δ̄ (FedProx: sites add μ/2‖w − w_global‖², μ = {agg.proximal_mu:g}, "
            "after DP noise)"
        ),
    }
    return f"{base}, then {steps[agg.aggregation]}"


def distributed_facts(settings: RunSettings, *, dim: int) -> dict[str, Any]:
    """The ``distributed`` guarantee per collusion level, and its trust in plain words.

    Parameters
    ----------
    settings : RunSettings
        A run with noise placement ``distributed``.
    dim : int
        d: parameters of the generator's private module (enters the rounding slack).
    """
    plan = settings.distributed_plan()
    t_max = largest_tolerated_collusion(sites=plan.noise_sites, threshold=plan.threshold)
    return {
        "noise_sites": plan.noise_sites,
        "secagg_threshold": plan.threshold,
        "noise_multiplier_total": plan.sigma(dim),
        "accounted_noise_multiplier": accounting_multiplier(
            sigma=plan.sigma(dim),
            clip_norm=plan.clip_norm,
            grid=plan.grid,
            dim=dim,
            sites=plan.noise_sites,
        ),
        "steps": plan.steps,
        "sample_rate": plan.sample_rate,
        "delta": plan.delta,
        "expected_batch": plan.expected_batch,
        "grid": plan.grid,
        "parameters": dim,
        "epsilon_against_server": plan.epsilon_at(dim=dim, colluders=0),
        "largest_tolerated_collusion": t_max,
        "epsilon_at_largest_collusion": plan.epsilon_at(dim=dim, colluders=t_max),
        "trust_assumptions": [
            "secure aggregation holds: the server learns only the sum of at least "
            f"{plan.noise_sites} sites' noisy shares per step, never a single share",
            f"no more than {t_max} site(s) collude with the server (share their secrets or "
            "their noise); with more, the guarantee weakens beyond the figure above",
            f"dropouts: a step in which fewer than K = {plan.noise_sites} shares arrive is "
            "aborted before unmasking and the run stops; the sites that sent a share keep "
            "that step's charge in their ledgers",
            "each site's ledger charges every step it took part in at the t = 0 accounting, "
            "before its share leaves the site; a step asked again is charged again (a share "
            "is never re-sent into another sum)",
        ],
        "statement_markdown": plan.privacy_statement(dim=dim),
    }


def numeric_encoder_facts(settings: RunSettings) -> dict[str, Any]:
    """How numeric columns were encoded, and what the DP encoder stage sent and cost."""
    if not settings.fits_encoder:
        return {"kind": "minmax", "fitted_on": "the schema's public bounds only"}
    return {
        "kind": "dp-quantile",
        "bins": settings.model.encoder_bins,
        "budget_fraction": settings.encoder_budget_fraction,
        "histogram_noise_multiplier": settings.encoder_noise_multiplier(),
        "accounted_as": (
            "Gaussian mechanism (sigma_h, q = 1, 1 step) with L2 sensitivity sqrt(numeric "
            "columns), composed with DP-SGD in each site's ledger (round 0)"
        ),
        "sent_by_each_site_before_round_1": {
            rec: list(fields)
            for rec, fields in (
                keys.RELEASE_SHARE_REPLY_FIELDS
                if settings.secure_aggregation
                else keys.ENCODER_REPLY_FIELDS
            ).items()
        },
        "server_sees": (
            "only the sum of the sites' noisy histograms (masked shares under secure "
            "aggregation; each share is DP on its own). Details and the fitted CDFs: "
            "encoder.json"
            if settings.secure_aggregation
            else "each site's noisy histograms (secure aggregation is off); they are DP on "
            "their own. Details and the fitted CDFs: encoder.json"
        ),
    }


def effect_calibration_facts(settings: RunSettings) -> dict[str, Any]:
    """What the staged generator's DP effect calibration sent, cost and changed."""
    if not settings.calibrates_effect:
        return {"enabled": False}
    saved = Path(settings.out_dir) / "effect.json"
    info: dict[str, Any] = {}
    if saved.exists():
        info = dict(json.loads(saved.read_text(encoding="utf-8"))["info"])
    return {
        "enabled": True,
        "budget_fraction": settings.effect_budget_fraction,
        "noise_multiplier": settings.effect_noise_multiplier(),
        "accounted_as": (
            "Gaussian mechanism (sigma_e, q = 1, 1 step) on each site's clipped AIPW score sums, "
            "weighted treatment-arm counts and row count, L2 sensitivity "
            "sqrt((arms - 1) B^2 + w^2 + 1), composed with DP-SGD in each site's ledger "
            "(round = rounds + 1)"
        ),
        "sent_by_each_site_after_the_last_round": {
            rec: list(fields) for rec, fields in keys.EFFECT_REPLY_FIELDS.items()
        },
        "server_sees": (
            "each site's noisy sums (secure aggregation is not used for this stage); they are "
            "DP on their own. Details: effect.json"
        ),
        **{
            k: info[k]
            for k in ("estimate", "generator_effect_before", "units", "treatment_shares")
            if k in info
        },
    }


def secure_aggregation_facts(settings: RunSettings) -> dict[str, Any]:
    """What secure aggregation hid from the server, what it did not, and the trust assumed."""
    if not settings.secure_aggregation:
        return {"enabled": False}
    threshold = settings.secagg_threshold or "a strict majority of the sampled sites (at least 2)"
    distributed = settings.noise_placement == "distributed"
    if settings.releases_statistics:
        quantisation = (
            "each stage's counts (integers) scaled exactly to a grid 2^-b, discrete Gaussian "
            "noise added, summed modulo 2^48"
        )
        sees = "the sum of the sites' noisy count shares, once per release stage"
    elif distributed:
        quantisation = (
            "each site's noisy clipped gradient sum stochastically rounded to the grid "
            f"C·2^-{settings.distributed_plan().grid_bits} (C = {settings.max_grad_norm}) and "
            "summed modulo 2^48"
        )
        sees = "the sum of the sites' noisy gradient shares, once per DP-SGD step"
    else:
        quantisation = (
            f"each coordinate in [-C, C] (C = update clip norm {settings.update_clip_norm}) "
            f"stochastically rounded to 2^{settings.secagg_bits} levels"
        )
        sees = "the sum (hence the mean) of the surviving sites' quantised updates, each round"
    return {
        "enabled": True,
        "protocol": (
            "Bonawitz et al., CCS 2017 (pairwise X25519 masks + self masks, Shamir shares "
            "relayed under AES-GCM), semi-honest server"
        ),
        "threshold": threshold,
        "quantisation": quantisation,
        "server_sees": [
            sees,
            "which sites took part in each round and how many survived (round_history)",
            "each site's name, cumulative ε, δ and the other public accounting fields",
            "masked update vectors, uniformly random to the server on their own",
        ],
        "trust_assumption": (
            f"an individual site's update stays hidden unless the server colludes with "
            f"{threshold} or more sites, or the sites' secrets leak; a round with fewer "
            "surviving sites than the threshold is aborted and reveals nothing"
        ),
        "aborted_rounds": (
            "a site that trained in a round that later aborted keeps that round's ε charge "
            "in its ledger (at most one round's spend); nothing from that round is released"
        ),
    }
