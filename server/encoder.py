"""The coordinator's DP encoder stage: sum the sites' noisy histograms, fit quantile maps.

Runs once, before round 1, when ``numeric-encoder = "dp-quantile"``. Each site
sends its own noisy ``(numeric columns, bins)`` histogram (Gaussian mechanism,
charged to its ledger first, see :mod:`client.encoder`); the server sums them
and fits one public CDF per column (:func:`shared.dp_quantile.cdf_from_counts`),
which becomes part of the model (a state-dict buffer, shipped to every site with
the weights of each round and saved with the release).

Secure aggregation is *not* used for this stage, even when the run uses it: the
masking protocol here is wired to the training round's update, and each site's
histogram is already DP on its own (noise std σ_h·√d per bin), so the server
seeing it is allowed, though weaker than seeing only the sum. The privacy report
says so (``encoder.per_site_histograms_seen_by_server``).

The fitted CDFs and the stage's public facts are written to ``encoder.json`` in
the output folder, so a coordinator that restarts before round 1 is
checkpointed reuses them instead of asking (and charging) the sites again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.errors import CheckpointError, ProtocolError, RoundFailedError
from server.report import site_entry
from shared import keys
from shared.config import RunSettings
from shared.dp_quantile import HistogramRequest, cdf_from_counts, histogram_sensitivity
from shared.manifest import atomic_write_bytes
from shared.models import GeneratorFamily

log = logging.getLogger("fedsynth.server")
ENCODER_FILE = "encoder.json"


def parse_histogram_reply(msg: Message, shape: tuple[int, int]) -> tuple[dict[str, Any], Any]:
    """Check one reply against :data:`shared.keys.ENCODER_REPLY_FIELDS`.

    Returns
    -------
    (dict, numpy.ndarray or None)
        The site's public facts (name, status, reason, accounting) and its noisy
        counts (``None`` when it declined).
    """
    node = msg.metadata.src_node_id
    content = msg.content
    extra = set(content.keys()) - set(keys.ENCODER_REPLY_FIELDS)
    if extra:
        raise ProtocolError(f"node {node} sent unexpected record(s) {sorted(extra)}")
    metrics = {
        k: float(v)
        for k, v in dict(content[keys.PRIVACY_METRICS]).items()
        if isinstance(v, int | float)
    }
    if set(metrics) - set(keys.ENCODER_REPLY_FIELDS[keys.PRIVACY_METRICS]):
        raise ProtocolError(f"node {node} sent unexpected metric(s) in its histogram reply")
    info = dict(content[keys.SITE_INFO])
    if set(info) - set(keys.ENCODER_REPLY_FIELDS[keys.SITE_INFO]):
        raise ProtocolError(f"node {node} sent unexpected site field(s)")
    facts = {
        "site": str(info.get(keys.SITE_NAME, f"node-{node}")),
        "sent": info.get(keys.STATUS) == keys.STATUS_TRAINED,
        "reason": str(info.get(keys.REASON, "")),
        "accountant": str(info.get(keys.ACCOUNTANT, "")),
        "secure_mode": bool(info.get(keys.SECURE_MODE, False)),
        "noise_seed": str(info.get(keys.NOISE_SEED, "unknown")),
        "privacy": metrics,
    }
    if not facts["sent"]:
        if keys.HISTOGRAM_ARRAYS in content:
            raise ProtocolError(f"node {node} declined but still sent a histogram")
        return facts, None
    arrays = content.get(keys.HISTOGRAM_ARRAYS)
    if not isinstance(arrays, ArrayRecord) or set(arrays) != {keys.HISTOGRAM_COUNTS}:
        raise ProtocolError(f"node {node} sent no well-formed histogram")
    counts = arrays[keys.HISTOGRAM_COUNTS].numpy().astype(np.float64)
    if counts.shape != shape or not np.isfinite(counts).all():
        raise ProtocolError(f"node {node} sent a histogram of shape {counts.shape}, not {shape}")
    return facts, counts


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
    n_all = len(list(grid.get_node_ids()))
    node_ids, _ = sample_nodes(grid, settings.min_sites, max(n_all, settings.min_sites))
    messages = [
        Message(
            content=RecordDict({keys.ENCODER_CONFIG: ConfigRecord(config)}),
            dst_node_id=nid,
            message_type=f"train.{keys.ENCODER_HISTOGRAM}",
        )
        for nid in node_ids
    ]
    parsed: list[tuple[dict[str, Any], Any]] = []
    for rep in grid.send_and_receive(messages, timeout=settings.round_timeout):
        if rep.has_error():
            log.warning("encoder: node %d failed: %s", rep.metadata.src_node_id, rep.error.reason)
            continue
        try:
            parsed.append(parse_histogram_reply(rep, (d, bins)))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            log.warning("encoder: reply discarded: %s", exc)
    # Summed in site order so a seeded run is independent of reply order.
    parsed.sort(key=lambda p: str(p[0]["site"]))
    sent = [counts for facts, counts in parsed if counts is not None]
    for facts, _ in parsed:
        if not facts["sent"]:
            log.warning("encoder: site %s declined: %s", facts["site"], facts["reason"])
    if len(sent) < settings.min_sites:
        raise RoundFailedError(
            f"encoder stage: only {len(sent)} site histogram(s), fewer than the minimum of "
            f"{settings.min_sites}; nothing was fitted. Fix the sites (see their logs) and rerun "
            "with the same --out, or use --numeric-encoder minmax."
        )
    total = np.sum(sent, axis=0)
    cdfs = np.stack([cdf_from_counts(total[i]) for i in range(d)])
    family.set_numeric_encoder(cdfs)
    for facts, _ in parsed:
        sites[facts["site"]] = site_entry(
            facts["privacy"],
            facts["site"],
            facts["accountant"],
            facts["secure_mode"],
            facts["noise_seed"],
        )
    info = {
        "numeric_encoder": "dp-quantile",
        "bins": bins,
        "columns": [c.name for c in schema.columns if c.is_numeric],
        "noise_multiplier": sigma_h,
        "l2_sensitivity": histogram_sensitivity(d),
        "noise_std_per_bin": sigma_h * histogram_sensitivity(d),
        "budget_fraction": settings.encoder_budget_fraction,
        "sites_sent": sorted(str(f["site"]) for f, c in parsed if c is not None),
        "per_site_histograms_seen_by_server": True,
    }
    doc = {"identity": identity, "info": info, "cdfs": cdfs.tolist(), "sites": sites}
    atomic_write_bytes(saved, (json.dumps(doc, indent=1) + "\n").encode())
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
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cdfs = np.asarray(doc["cdfs"], dtype=np.float64)
        info = dict(doc["info"])
        saved_sites = dict(doc["sites"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({exc}); the sites were already charged for it, so restore it "
            "from backup rather than deleting it (deleting it charges them again)"
        ) from None
    if doc.get("identity") != identity:
        raise CheckpointError(
            f"{path} was written by a run with different settings or schema; use a new --out "
            "folder, or rerun with the original settings to resume"
        )
    family.set_numeric_encoder(cdfs)  # raises ModelError if the CDFs are damaged
    sites.update(saved_sites)
    log.info("encoder: reusing the quantile maps already fitted for this run (%s)", path)
    return info
