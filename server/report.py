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
from server.report_md import render_markdown
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
            # Local placement's public divisor (q × announced rows per site); never q·n.
            **(
                {"expected_batch": settings.expected_batch}
                if settings.noise_placement == "local"
                else {}
            ),
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


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """Write ``privacy_report.json`` and ``privacy_report.md`` into ``folder``."""
    (folder / "privacy_report.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    (folder / "privacy_report.md").write_text(render_markdown(report), encoding="utf-8")
