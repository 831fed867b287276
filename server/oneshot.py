"""Collecting one-shot releases from the sites (encoder histograms, effect sums).

Each site answers with its own noisy vector (already DP on its own, charged to its
ledger before the reply) or declines. The server checks every reply against the
agreed fields, discards malformed ones, and refuses to go on with fewer than
``min_sites`` vectors. Secure aggregation is not used for these stages: the
server sees each site's noisy vector, and the privacy report says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.errors import CheckpointError, ProtocolError, RoundFailedError
from server.identity import node_label, registered_name
from server.report import merge_site, site_entry
from shared import keys
from shared.config import RunSettings
from shared.manifest import atomic_write_bytes

log = logging.getLogger("fedsynth.server")
Parsed = tuple[dict[str, Any], np.ndarray | None]


def parse_release_reply(
    msg: Message,
    *,
    fields: dict[str, tuple[str, ...]],
    record: tuple[str, str],
    shape: tuple[int, ...],
    masked: bool = False,
) -> Parsed:
    """Check one reply against ``fields``; return the site's public facts and its values.

    The values are ``None`` when the site declined. ``masked``: they are a masked
    ring vector of secure aggregation (unsigned integers, returned as sent).
    """
    node = msg.metadata.src_node_id
    content = msg.content
    extra = set(content.keys()) - set(fields)
    if extra:
        raise ProtocolError(f"node {node} sent unexpected record(s) {sorted(extra)}")
    metrics = {
        k: float(v)
        for k, v in dict(content[keys.PRIVACY_METRICS]).items()
        if isinstance(v, int | float)
    }
    if set(metrics) - set(fields[keys.PRIVACY_METRICS]):
        raise ProtocolError(f"node {node} sent unexpected metric(s) in its reply")
    info = dict(content[keys.SITE_INFO])
    if set(info) - set(fields[keys.SITE_INFO]):
        raise ProtocolError(f"node {node} sent unexpected site field(s)")
    facts = {
        "site": registered_name(node, str(info.get(keys.SITE_NAME, f"node-{node}"))),
        "sent": info.get(keys.STATUS) == keys.STATUS_TRAINED,
        "reason": str(info.get(keys.REASON, "")),
        "accountant": str(info.get(keys.ACCOUNTANT, "")),
        "secure_mode": bool(info.get(keys.SECURE_MODE, False)),
        "noise_seed": str(info.get(keys.NOISE_SEED, "unknown")),
        "privacy": metrics,
    }
    if not facts["sent"]:
        if record[0] in content:
            raise ProtocolError(f"node {node} declined but still sent values")
        return facts, None
    arrays = content.get(record[0])
    if not isinstance(arrays, ArrayRecord) or set(arrays) != {record[1]}:
        raise ProtocolError(f"node {node} sent no well-formed {record[0]!r} record")
    values = arrays[record[1]].numpy()
    if masked:
        if values.shape != shape or values.dtype not in (np.uint32, np.uint64):
            raise ProtocolError(f"node {node} sent a masked vector that is not uint32/64{shape}")
        return facts, values.astype(np.uint64)
    values = values.astype(np.float64)
    if values.shape != shape or not np.isfinite(values).all():
        raise ProtocolError(f"node {node} sent values of shape {values.shape}, not {shape}")
    return facts, values


def collect_releases(
    grid: Grid,
    settings: RunSettings,
    *,
    stage: str,
    message_type: str,
    content: Callable[[], RecordDict],
    parse: Callable[[Message], Parsed],
    fix: str,
) -> tuple[list[Parsed], np.ndarray]:
    """Ask every node once; return the parsed replies (site order) and the sum of the values.

    Raises
    ------
    RoundFailedError
        Fewer than ``min_sites`` sites sent values; ``fix`` says what to do.
    """
    n_all = len(list(grid.get_node_ids()))
    node_ids, _ = sample_nodes(grid, settings.min_sites, max(n_all, settings.min_sites))
    messages = [
        Message(content=content(), dst_node_id=nid, message_type=f"train.{message_type}")
        for nid in node_ids
    ]
    parsed: list[Parsed] = []
    for rep in grid.send_and_receive(messages, timeout=settings.round_timeout):
        if rep.has_error():
            who = node_label(rep.metadata.src_node_id)
            log.warning("%s: %s failed: %s", stage, who, rep.error.reason)
            continue
        try:
            parsed.append(parse(rep))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: reply discarded: %s", stage, exc)
    # Summed in site order so a seeded run is independent of reply order.
    parsed.sort(key=lambda p: str(p[0]["site"]))
    sent = [values for _, values in parsed if values is not None]
    for facts, values in parsed:
        if values is None:
            log.warning("%s: site %s declined: %s", stage, facts["site"], facts["reason"])
    if len(sent) < settings.min_sites:
        raise RoundFailedError(
            f"{stage}: only {len(sent)} site release(s), fewer than the minimum of "
            f"{settings.min_sites}; nothing was fitted. Fix the sites (see their logs) and "
            f"rerun with the same --out, or {fix}."
        )
    return parsed, np.sum(sent, axis=0)


def sites_sent(parsed: list[Parsed]) -> list[str]:
    """Names of the sites whose release arrived (not those that declined), sorted."""
    return sorted(str(facts["site"]) for facts, values in parsed if values is not None)


def record_sites(
    parsed: list[Parsed], sites: dict[str, dict[str, Any]], *, after_training: bool = False
) -> None:
    """Update ``sites`` with each replying site's cumulative accounting.

    ``after_training``: a site that trained keeps its DP-SGD parameters (σ, q, C) in
    the report's table, and only its cumulative ε and steps move on.
    """
    for facts, values in parsed:
        entry = site_entry(
            facts["privacy"],
            facts["site"],
            facts["accountant"],
            facts["secure_mode"],
            facts["noise_seed"],
        )
        if after_training and facts["site"] in sites:
            if values is not None:
                sites[facts["site"]].update(epsilon=entry["epsilon"], steps=entry["steps"])
            continue
        merge_site(sites, entry)


def save_stage(path: Path, doc: dict[str, Any]) -> None:
    """Write a stage's saved result (identity, facts, sums, sites) atomically."""
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())


def load_stage(path: Path, identity: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Read a stage saved by this run; refuse a damaged file or another run's.

    Raises
    ------
    CheckpointError
        The file is unreadable, lacks one of ``fields``, or was written by a run with
        other settings.
    """
    try:
        doc = dict(json.loads(path.read_text(encoding="utf-8")))
        missing = [f for f in fields if f not in doc]
        if missing:
            raise KeyError(", ".join(missing))
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
    return doc
