"""The privacy report released with every synthetic table (JSON and Markdown).

Each site's ε is the cumulative figure from that site's own ledger (all rounds,
all runs), exactly as the site reported it; the coordinator never computes a
site's ε itself. The report also lists everything the sites sent.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from server.report_facts import (
    aggregation_text,
    effect_calibration_facts,
    numeric_encoder_facts,
    secure_aggregation_facts,
)
from server.report_release import release_markdown
from shared import keys
from shared.config import RunSettings


def site_entry(
    privacy: dict[str, float], site: str, accountant: str, secure_mode: bool, noise_seed: str
) -> dict[str, Any]:
    """One row of ``sites`` in the report, from a site's latest reply."""
    return {
        "site": site,
        "epsilon": float(privacy.get(keys.EPSILON, 0.0)),
        "delta": float(privacy.get(keys.DELTA, 0.0)),
        "noise_multiplier": float(privacy.get(keys.NOISE_MULTIPLIER, 0.0)),
        "sample_rate": float(privacy.get(keys.SAMPLE_RATE, 0.0)),
        "steps": int(privacy.get(keys.TOTAL_STEPS, 0)),
        "max_grad_norm": float(privacy.get(keys.MAX_GRAD_NORM, 0.0)),
        "accountant": accountant,
        "secure_mode": bool(secure_mode),
        "noise_seed": noise_seed,
        **({"num_rows": int(privacy[keys.NUM_ROWS])} if keys.NUM_ROWS in privacy else {}),
        **(
            {"train_seconds": float(privacy[keys.TRAIN_SECONDS])}
            if keys.TRAIN_SECONDS in privacy
            else {}
        ),
    }


def merge_site(sites: dict[str, dict[str, Any]], entry: dict[str, Any]) -> None:
    """Record a site's latest reply in ``sites``, never lowering its cumulative ε.

    A site that declines because its ledger cannot be read reports ε = 0; a ledger
    only grows, so a lower figure than one already seen is kept out of the report.
    """
    old = sites.get(entry["site"])
    if old is not None and float(old["epsilon"]) > float(entry["epsilon"]):
        return
    sites[entry["site"]] = entry


def build_report(
    settings: RunSettings,
    sites: dict[str, dict[str, Any]],
    rounds: int,
    generator: str,
    sigma: float,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Assemble ``privacy_report.json``."""
    opt_in = [
        key
        for key, field in ((keys.NUM_ROWS, "num_rows"), (keys.TRAIN_SECONDS, "train_seconds"))
        if any(field in s for s in sites.values())
    ]
    return {
        "generator": generator,
        "rounds": rounds,
        "sites": [sites[name] for name in sorted(sites)],
        "site_names": (
            "checked: each is the name its authenticated key was registered under at the "
            "coordinator (server.identity)"
            if settings.site_nodes
            else "declared by each site (--site-name), not checked against a registry "
            "(a simulation, or a deployment without node authentication)"
        ),
        "unit": "one patient record at one site (add/remove neighbouring)",
        "guarantee": (
            "Each site's records are (epsilon, delta)-DP with respect to everything that site sent "
            "to the consortium, over all rounds and runs recorded in its ledger. The global model, "
            "the synthetic table and this report are post-processing of those messages."
        ),
        "run": {
            "target_epsilon_this_run": settings.epsilon,
            "calibration_delta": settings.delta,
            "noise_multiplier": sigma,
            "sample_rate": settings.sample_rate,
            "max_grad_norm": settings.max_grad_norm,
            "local_steps_per_round": settings.local_steps,
            "rounds_planned": settings.rounds,
            "noise_placement": settings.noise_placement,
            "aggregation": (
                "secure sum of the sites' noisy gradient shares divided by the public expected "
                "batch, then one server-side Adam step per DP-SGD step"
                if settings.noise_placement == "distributed"
                else aggregation_text(settings)
            ),
            "server_optimiser": {
                **asdict(settings.aggregation),
                "server_learning_rate": settings.aggregation.learning_rate,
            },
            "update_clip_norm": settings.update_clip_norm,
            "sampling": "Poisson, exact rate q per row and step (client.sampling)",
            "secure_aggregation": settings.secure_aggregation,
        },
        "secure_aggregation": secure_aggregation_facts(settings),
        "numeric_encoder": numeric_encoder_facts(settings),
        "effect_calibration": effect_calibration_facts(settings),
        "sent_by_each_site": {
            rec: list(fields)
            for rec, fields in (
                keys.SECAGG_REPLY_FIELDS if settings.secure_aggregation else keys.SITE_REPLY_FIELDS
            ).items()
        },
        # Before the run's first charge (server.plan): public figures of the ledger only.
        "sent_by_each_site_for_the_run_plan": {
            rec: list(fields) for rec, fields in keys.PLAN_REPLY_FIELDS.items()
        },
        "opt_in_fields_sent": opt_in,
        "not_protected": [
            "which sites took part in each round, and each site's name",
            "the schema (public by design: column types, category lists, bounds)",
            "the DP parameters (sigma, q, C, steps) and each site's cumulative epsilon",
            *(
                [
                    "the coordinator sees the sum of the surviving sites' updates each round (and "
                    "which sites survived); that sum is post-processing of DP updates"
                ]
                if settings.secure_aggregation
                else [
                    "the coordinator sees each site's individual update (secure aggregation was "
                    "off for this run); those updates are themselves DP"
                ]
            ),
        ],
        "round_history": history,
    }


def _md_secagg(report: dict[str, Any]) -> str:
    facts = report.get("secure_aggregation", {"enabled": False})
    if not facts["enabled"]:
        what = "noisy statistics" if "release_stages" in report else "(DP, clipped) update"
        return (
            f"## Secure aggregation\n\nOff for this run: the coordinator saw each site's {what}.\n"
        )
    sees = "\n".join(f"- {x}" for x in facts["server_sees"])
    rounds = "\n".join(
        f"- round {h['round']}: {', '.join(h['trained']) or 'none'} "
        f"({h['secure_aggregation']['survivors']} survivor(s), threshold "
        f"{h['secure_aggregation']['threshold']})"
        for h in report["round_history"]
        if "secure_aggregation" in h
    )
    return f"""## Secure aggregation

On: {facts["protocol"]}. The server learns only the sum of the sites' updates.
Quantisation: {facts["quantisation"]}.

What the server still sees:

{sees}

Trust assumption: {facts["trust_assumption"]}.
Aborted rounds: {facts["aborted_rounds"]}.

Sites in each round:

{rounds}
"""


def _md_placement(placement: str) -> str:
    if placement == "distributed":
        return "distributed (each site adds a 1/K share of one central DP-SGD step's noise)"
    return "local (each site runs DP-SGD on its own rows)"


def _md_update_clip(run: dict[str, Any]) -> str:
    if run["noise_placement"] == "distributed":
        return ""
    return f", update clip norm {run['update_clip_norm']}"


def _md_distributed(report: dict[str, Any]) -> str:
    facts = report.get("distributed")
    if not facts:
        return ""
    return f"""
{facts["statement_markdown"]}

Each site's ledger records every step it took part in with the accounted noise
multiplier σC/Δ = {facts["accounted_noise_multiplier"]:.4f}, q = {facts["sample_rate"]:g}
(the guarantee against the server, t = 0): ε = {facts["epsilon_against_server"]:.4f} after all
{facts["steps"]} steps; against the server and {facts["largest_tolerated_collusion"]} colluding
site(s): ε = {facts["epsilon_at_largest_collusion"]:.4f}.
"""


def _md_table(sites: list[dict[str, Any]]) -> str:
    head = "| site | ε (cumulative) | δ | σ | q | steps (all runs) | C | accountant | secure_mode |"
    rows = [head, "|" + "---|" * 9]
    for s in sites:
        rows.append(
            f"| {s['site']} | {s['epsilon']:.4f} | {s['delta']:.1e} | {s['noise_multiplier']:.4f} | "
            f"{s['sample_rate']:.4f} | {s['steps']} | {s['max_grad_norm']:g} | {s['accountant']} | "
            f"{'on' if s['secure_mode'] else 'off'} |"
        )
    return "\n".join(rows)


def _md_effect(report: dict[str, Any]) -> str:
    facts = report.get("effect_calibration", {"enabled": False})
    if not facts["enabled"]:
        return ""
    est = ", ".join(f"{e:.3f}" for e in facts.get("estimate", []))
    return (
        f"\n## Effect calibration\n\nAfter the last round each site released its clipped AIPW "
        f"score sums once (σ_e = {facts['noise_multiplier']:.4f}, "
        f"{facts['budget_fraction']:.0%} of ε). The DP estimate of the effect, {est}, "
        "became the released generator's treatment effect (see effect.json).\n"
    )


def _md_fitted(report: dict[str, Any]) -> str:
    if "release_stages" in report:
        return f"fitted from {report['run']['stages']} noisy release stage(s)"
    return f"{report['rounds']} aggregated round(s)"


def _md_run(report: dict[str, Any]) -> str:
    if "release_stages" in report:
        return release_markdown(report)
    run = report["run"]
    return f"""- noise multiplier σ = {run["noise_multiplier"]:.4f}, Poisson sampling rate q = {run["sample_rate"]},
  per-record clip norm C = {run["max_grad_norm"]}, {run["local_steps_per_round"]} DP-SGD steps per round
- σ was calibrated so this run's planned steps spend ε = {run["target_epsilon_this_run"]}
  at δ = {run["calibration_delta"]} ({run["rounds_planned"]} rounds planned)
- noise placement: {_md_placement(run["noise_placement"])};
  aggregation: {run["aggregation"]}{_md_update_clip(run)}"""


def _md_fields(fields: dict[str, list[str]]) -> str:
    return "; ".join(
        f"`{rec}`: {', '.join(f'`{f}`' for f in names)}" for rec, names in fields.items()
    )


def render_markdown(report: dict[str, Any]) -> str:
    """Human-readable ``privacy_report.md``."""
    sent = "\n".join(
        f"- `{rec}`: {', '.join(f'`{f}`' for f in fields)}"
        for rec, fields in report["sent_by_each_site"].items()
    )
    gaps = "\n".join(f"- {g}" for g in report["not_protected"])
    simulated = [s["site"] for s in report["sites"] if s.get("noise_seed") == "simulation"]
    insecure = [s["site"] for s in report["sites"] if not s["secure_mode"]]
    # Simulated sites' seeds come from the run's seed (said below), not from the OS.
    seeded = (
        "" if set(insecure) & set(simulated) else " (seeded from the site's secret OS randomness)"
    )
    warn = (
        f"\n> **Note:** Opacus `secure_mode` was off at {', '.join(insecure)}: noise came from a "
        f"fast pseudo-random generator{seeded}. For "
        "production releases each site turns it on: `fedsynth client --secure-mode` (in the "
        "systemd unit, `FEDSYNTH_EXTRA_ARGS=--secure-mode`; needs `torchcsprng`).\n"
        if insecure
        else ""
    )
    if simulated:
        warn += (
            f"\n> **Simulation:** the noise at {', '.join(simulated)} was seeded from the run's "
            "seed so the run reproduces. Anyone with the seed can regenerate that noise: this "
            "is for research on data that needs no protection, never for a real release.\n"
        )
    return f"""# Privacy report

Generator: **{report["generator"]}**, {_md_fitted(report)}.

## Guarantee per site

{_md_table(report["sites"])}

Site names: {report["site_names"]}.

ε is each site's **cumulative** spend over every round and run in its privacy ledger.
Unit of privacy: {report["unit"]}. {report["guarantee"]}
{warn}
## This run

{_md_run(report)}
{_md_distributed(report)}
{_md_secagg(report)}{_md_effect(report)}
## What each site sent

{sent}

Before a run's first charge (and on resume, when anything is left to charge), each site
answers the run's plan (whether it could afford the whole run) with {_md_fields(report.get("sent_by_each_site_for_the_run_plan", {}))}: figures of
its ledger only, charging nothing.

Opt-in fields sent: {", ".join(report["opt_in_fields_sent"]) or "none"}.
No rows, row counts (unless opted in), losses or other metrics computed on real rows left any site.

## Not protected

{gaps}
"""


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """Write ``privacy_report.json`` and ``privacy_report.md`` into ``folder``."""
    (folder / "privacy_report.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    (folder / "privacy_report.md").write_text(render_markdown(report), encoding="utf-8")
