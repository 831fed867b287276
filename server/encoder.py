"""The coordinator's DP encoder stage: sum the sites' noisy histograms, fit quantile maps.

Runs once, before round 1, when ``numeric-encoder = "dp-quantile"``. Each site
sends its own noisy ``(numeric columns, bins)`` histogram (Gaussian mechanism,
charged to its ledger first, see :mod:`client.encoder`); the server sums them
and fits one public CDF per column (:func:`shared.dp_quantile.cdf_from_counts`),
which becomes part of the model (a state-dict buffer, shipped to every site with
the weights of each round and saved with the release).

When the run uses secure aggregation, so does this stage
(:func:`server.release_secure.secure_stage_sum`): each site sends its counts plus
discrete Gaussian noise of the same std σ_h·√d as a masked share, and the server
learns only the sum. Without it the server sees each site's noisy histogram, which
is DP on its own, so allowed, though weaker than seeing only the sum. The privacy
report says which (``encoder.per_site_histograms_seen_by_server``).

The fitted CDFs and the stage's public facts are written to ``encoder.json`` in
the output folder, so a coordinator that restarts before round 1 is
checkpointed reuses them instead of asking (and charging) the sites again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Message, RecordDict
from flwr.serverapp import Grid

from server.errors import CheckpointError
from server.oneshot import (
    Parsed,
    collect_releases,
    load_stage,
    parse_release_reply,
    record_sites,
    save_stage,
    sites_sent,
)
from server.release_secure import secure_stage_sum
from shared import keys
from shared.config import RunSettings
from shared.dp_quantile import HistogramRequest, cdf_from_counts, histogram_sensitivity
from shared.models import GeneratorFamily

log = logging.getLogger("fedsynth.server")
ENCODER_FILE = "encoder.json"


def parse_histogram_reply(msg: Message, shape: tuple[int, int]) -> Parsed:
    """Check one reply against :data:`shared.keys.ENCODER_REPLY_FIELDS`.

    Returns
    -------
    (dict, numpy.ndarray or None)
        The site's public facts (name, status, reason, accounting) and its noisy
        counts (``None`` when it declined).
    """
    return parse_release_reply(
        msg,
        fields=keys.ENCODER_REPLY_FIELDS,
        record=(keys.HISTOGRAM_ARRAYS, keys.HISTOGRAM_COUNTS),
        shape=shape,
    )


def fit_encoder(
    grid: Grid,
    settings: RunSettings,
    family: GeneratorFamily,
    sites: dict[str, dict[str, Any]],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """Fit the DP quantile encoder (or reuse the one saved by this run) into ``family``.

    Updates ``sites`` with each site's cumulative accounting after its release.

    Returns
    -------
    dict
        Public facts of the stage for the report.

    Raises
    ------
    RoundFailedError
        Fewer than ``min_sites`` histograms arrived: nothing was fitted.
    """
    saved = Path(settings.out_dir) / ENCODER_FILE
    if saved.exists():
        return _reuse(saved, family, sites, identity)
    schema = family.schema
    d = sum(1 for c in schema.columns if c.is_numeric)
    bins = settings.model.encoder_bins
    sigma_h = settings.encoder_noise_multiplier()
    request = HistogramRequest(sigma_h, bins, schema.fingerprint(), settings.accountant)
    config = cast("dict[str, ConfigRecordValues]", request.to_config())
    if settings.secure_aggregation:
        # Each share carries the full noise (K = 1): counts are integers, grid 1.
        parsed, sent, flat, _ = secure_stage_sum(
            grid,
            settings,
            label="encoder stage",
            message_type=keys.ENCODER_SHARE,
            content=RecordDict({keys.ENCODER_CONFIG: ConfigRecord(config)}),
            length=d * bins,
            noise_sites=1,
            grid_bits=0,
        )
        total = flat.reshape(d, bins)
    else:
        parsed, total = collect_releases(
            grid,
            settings,
            stage="encoder stage",
            message_type=keys.ENCODER_HISTOGRAM,
            content=lambda: RecordDict({keys.ENCODER_CONFIG: ConfigRecord(config)}),
            parse=lambda rep: parse_histogram_reply(rep, (d, bins)),
            fix="use --numeric-encoder minmax",
        )
        sent = sites_sent(parsed)
    cdfs = np.stack([cdf_from_counts(total[i]) for i in range(d)])
    family.set_numeric_encoder(cdfs)
    record_sites(parsed, sites)
    info = {
        "numeric_encoder": "dp-quantile",
        "bins": bins,
        "columns": [c.name for c in schema.columns if c.is_numeric],
        "noise_multiplier": sigma_h,
        "l2_sensitivity": histogram_sensitivity(d),
        "noise_std_per_bin": sigma_h * histogram_sensitivity(d),
        "budget_fraction": settings.encoder_budget_fraction,
        "sites_sent": sent,
        "per_site_histograms_seen_by_server": not settings.secure_aggregation,
    }
    save_stage(saved, {"identity": identity, "info": info, "cdfs": cdfs.tolist(), "sites": sites})
    log.info(
        "encoder: fitted quantile maps for %d column(s) from %d site(s), σ_h = %.4f",
        d,
        len(sent),
        sigma_h,
    )
    return info


def _reuse(
    path: Path,
    family: GeneratorFamily,
    sites: dict[str, dict[str, Any]],
    identity: dict[str, Any],
) -> dict[str, Any]:
    doc = load_stage(path, identity, ("cdfs", "info", "sites"))
    try:
        cdfs = np.asarray(doc["cdfs"], dtype=np.float64)
        info, saved_sites = dict(doc["info"]), dict(doc["sites"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); restore it from backup") from None
    family.set_numeric_encoder(cdfs)  # raises ModelError if the CDFs are damaged
    sites.update(saved_sites)
    log.info("encoder: reusing the quantile maps already fitted for this run (%s)", path)
    return info
