"""The privacy report's sections for a release family (``dp-marginal``, ``dp-copula``): no DP-SGD rounds.

:func:`add_release_stages` rewrites the report's DP-SGD facts into the stages' facts
(what each site released, at which σ_s and Δ_s, and what the coordinator could see);
:func:`release_markdown` renders them.
"""

from __future__ import annotations

from typing import Any

from shared import keys
from shared.accounting import epsilon_of
from shared.config import RunSettings
from shared.distdp.accounting import effective_sigma, largest_tolerated_collusion


def add_release_stages(
    report: dict[str, Any], settings: RunSettings, stages: dict[str, Any]
) -> None:
    """Rewrite ``report``'s DP-SGD sections for a release family (no DP-SGD rounds)."""
    report["release_stages"] = stages
    report["run"] = _release_run(settings, stages)
    secure = settings.secure_aggregation
    fields = keys.RELEASE_SHARE_REPLY_FIELDS if secure else keys.RELEASE_REPLY_FIELDS
    report["sent_by_each_site"] = {rec: list(f) for rec, f in fields.items()}
    gaps = [g for g in report["not_protected"] if "individual update" not in g]
    if not secure:
        gaps.append(
            "the coordinator sees each site's noisy statistics of every stage (secure "
            "aggregation is off); each is DP on its own"
        )
    report["not_protected"] = gaps
    if secure and settings.noise_placement == "distributed":
        stages["collusion"] = release_collusion(settings)


def release_collusion(settings: RunSettings) -> dict[str, Any]:
    """ε per site against the server alone and colluding with the most sites tolerated.

    With t colluders their noise shares are known, and each stage's honest noise is
    σ_s√((K − t)/K) (:func:`shared.distdp.accounting.effective_sigma`).
    """
    k = settings.min_sites
    t_max = largest_tolerated_collusion(sites=k, threshold=settings.noise_share_threshold)
    mechanisms = settings.mechanisms()

    def eps(t: int) -> float:
        scale = effective_sigma(sigma=1.0, sites=k, colluders=t)
        honest = [(s * scale, q, n) for s, q, n in mechanisms]
        return epsilon_of(honest, delta=settings.delta, accountant=settings.accountant)

    return {
        "noise_sites": k,
        "largest_tolerated_collusion": t_max,
        "epsilon_against_server": eps(0),
        "epsilon_at_largest_collusion": eps(t_max),
    }


def _release_mechanism(settings: RunSettings) -> str:
    recorded = (
        "Each is recorded in the site's ledger as (sigma_s, q = 1, 1 step): the guarantee "
        "against the coordinator"
    )
    if not settings.secure_aggregation:
        return (
            "one Gaussian release per stage: each site adds N(0, (sigma_s Delta_s)^2) to every "
            "coordinate of its statistics, with sigma_s = sigma / sqrt(rho_s) for the stage's "
            "budget share rho_s, so the stages compose to one release at sigma: epsilon per "
            f"site. {recorded}."
        )
    if settings.noise_placement == "distributed":
        return (
            "one distributed discrete Gaussian release per stage under secure aggregation: "
            f"each of K = {settings.min_sites} sites adds discrete Gaussian noise of variance "
            "(sigma_s Delta_s)^2 / K to its statistics, and the coordinator learns only the sum, "
            "which carries the noise of one central release at sigma_s = sigma / sqrt(rho_s). "
            f"{recorded}, assuming secure aggregation holds and fewer than the threshold of "
            "sites collude with it; with t colluders the honest noise is sigma_s sqrt((K - t)/K)."
        )
    return (
        "one discrete Gaussian release per stage under secure aggregation: each site adds "
        "noise of std sigma_s Delta_s to its statistics (DP on its own), and the coordinator "
        f"learns only the sum. {recorded}."
    )


def _release_run(settings: RunSettings, stages: dict[str, Any]) -> dict[str, Any]:
    return {
        "target_epsilon_this_run": settings.epsilon,
        "calibration_delta": settings.delta,
        "noise_multiplier": stages["release_noise_multiplier"],
        "noise_placement": settings.noise_placement,
        "secure_aggregation": settings.secure_aggregation,
        "mechanism": _release_mechanism(settings),
        "stages": len(stages["stages"]),
        "settings_not_used": [
            "rounds",
            "local-steps",
            "sample-rate",
            "max-grad-norm",
            "learning-rate",
            "update-clip-norm",
            "aggregation",
        ],
    }


def _seen_by_coordinator(run: dict[str, Any], facts: dict[str, Any]) -> str:
    if not run["secure_aggregation"]:
        return (
            "- the coordinator saw each site's noisy statistics (noise placement local, no "
            "secure aggregation): each is DP on its own, and their sum carries √n times one "
            "release's noise (n sites)."
        )
    if run["noise_placement"] == "distributed":
        c = facts["collusion"]
        return (
            "- under secure aggregation the coordinator learnt only the sum of the sites' "
            f"shares (noise placement distributed): each of K = {c['noise_sites']} shares "
            "carries 1/K of the noise variance, and the sum the noise of one central release. "
            f"ε per site against the coordinator: {c['epsilon_against_server']:.3f}; if it "
            f"colludes with {c['largest_tolerated_collusion']} site(s), the most the threshold "
            f"tolerates, ε = {c['epsilon_at_largest_collusion']:.3f}."
        )
    return (
        "- under secure aggregation the coordinator learnt only the sum of the sites' "
        "shares; each share carries the full noise (DP on its own)."
    )


def release_markdown(report: dict[str, Any]) -> str:
    """The report's "This run" section for a release family."""
    run, facts = report["run"], report["release_stages"]
    lines = "\n".join(
        f"- stage {s['stage']}: {s['length']} statistics, {s['budget_share']:.0%} of the budget, "
        f"σ_s = {s['noise_multiplier']:.4f}, L2 sensitivity Δ_s = {s['l2_sensitivity']:.3f}, "
        f"sent by {', '.join(s['sites_sent'])}"
        for s in facts["stages"]
    )
    return f"""- no DP-SGD: the model was fitted from {run["stages"]} noisy release(s) of
  statistics per site; σ = {run["noise_multiplier"]:.4f} was calibrated so they spend
  ε = {run["target_epsilon_this_run"]} at δ = {run["calibration_delta"]}

{lines}

{_seen_by_coordinator(run, facts)} The summed vectors are in {facts["saved_sums"]}.
"""
