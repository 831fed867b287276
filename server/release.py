"""The release: final model, synthetic table and privacy report in ``--out``.

Everything here is post-processing of the aggregated DP updates: sampling and
reporting touch no site data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from server.report import build_report, write_report
from server.report_facts import distributed_facts
from server.report_release import add_release_stages
from shared.config import RunSettings
from shared.distdp.step import parameter_count
from shared.manifest import save_model
from shared.models import GeneratorFamily
from shared.tables import load_table

log = logging.getLogger("fedsynth.server")
DEFAULT_SYNTHETIC_ROWS = 10_000


def release(
    out: Path,
    family: GeneratorFamily,
    settings: RunSettings,
    sites: dict[str, dict[str, Any]],
    history: list[dict[str, Any]],
    sigma: float,
    release_stages: dict[str, Any] | None = None,
) -> Path:
    """Write ``model/``, ``synthetic.csv``, ``privacy_report.json`` and ``.md``.

    The synthetic table is read back and validated against the schema, so a
    release never contains a value the schema forbids. ``release_stages``: the
    public facts of a release family's stages (:mod:`server.release_stages`).
    """
    report = build_report(settings, sites, len(history), family.name, sigma, history)
    if release_stages is not None:
        add_release_stages(report, settings, release_stages)
    elif settings.noise_placement == "distributed":
        report["distributed"] = distributed_facts(
            settings, dim=parameter_count(family.private_module())
        )
    save_model(
        out / "model",
        family,
        {
            "privacy": {"sites": report["sites"], "rounds": report["rounds"]},
            "run_settings": settings.as_dict(),
        },
    )
    n = settings.synthetic_rows or DEFAULT_SYNTHETIC_ROWS
    table = family.sample(n, seed=settings.seed)
    path = out / "synthetic.csv"
    table.to_csv(path, index=False)
    load_table(path, family.schema)  # raises DataValidationError if anything slipped through
    write_report(out, report)
    log.info("released %d synthetic rows to %s", n, path)
    return out
