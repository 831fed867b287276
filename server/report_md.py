"""The privacy report's Markdown form (``privacy_report.md``), from its JSON dict."""

from __future__ import annotations

from typing import Any

from server.report_release import release_markdown


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
    shares = ", ".join(f"{s:.3f}" for s in facts.get("treatment_shares", []))
    share_text = (
        f" The DP treatment shares, {shares} (reference arm first), became its treatment shares."
        if shares
        else ""
    )
    return (
        f"\n## Effect calibration\n\nAfter the last round each site released its clipped AIPW "
        f"score sums and treatment-arm counts once (σ_e = {facts['noise_multiplier']:.4f}, "
        f"{facts['budget_fraction']:.0%} of ε). The DP estimate of the effect, {est}, "
        f"became the released generator's treatment effect (see effect.json).{share_text}\n"
    )


def _md_fitted(report: dict[str, Any]) -> str:
    if "release_stages" in report:
        return f"fitted from {report['run']['stages']} noisy release stage(s)"
    return f"{report['rounds']} aggregated round(s)"


def _md_divisor(run: dict[str, Any]) -> str:
    if run["noise_placement"] == "distributed" or "expected_batch" not in run:
        return ""
    return (
        f";\n  each site divides its noisy gradient sum by the public expected batch "
        f"{run['expected_batch']:g} (never by its own row count)"
    )


def _md_run(report: dict[str, Any]) -> str:
    if "release_stages" in report:
        return release_markdown(report)
    run = report["run"]
    return f"""- noise multiplier σ = {run["noise_multiplier"]:.4f}, Poisson sampling rate q = {run["sample_rate"]},
  per-record clip norm C = {run["max_grad_norm"]}, {run["local_steps_per_round"]} DP-SGD steps per round{_md_divisor(run)}
- σ was calibrated so this run's planned steps spend ε = {run["target_epsilon_this_run"]}
  at δ = {run["calibration_delta"]} ({run["rounds_planned"]} rounds planned)
- noise placement: {_md_placement(run["noise_placement"])};
  aggregation: {run["aggregation"]}{_md_update_clip(run)}"""


def _one_line(text: str, limit: int = 300) -> str:
    # A site wrote it: keep it to one bounded Markdown line.
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _md_declines(history: list[dict[str, Any]]) -> str:
    lines = [
        f"- round {h['round']}: {_one_line(site)}: {_one_line(reason)}"
        for h in history
        for site, reason in sorted(h.get("decline_reasons", {}).items())
    ]
    if not lines:
        return ""
    listed = "\n".join(lines)
    return (
        "\n## Declined rounds\n\nA declining site sent no update that round. The reason is "
        "the public text it sent: the kind of failure, or for a budget refusal the public "
        "σ, q, steps and ε (details stay in its log). Its ε above is its ledger's own "
        f"figure.\n\n{listed}\n"
    )


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
{_md_secagg(report)}{_md_effect(report)}{_md_declines(report.get("round_history", []))}
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
