"""Aggregation of the sites' clipped updates (FedAvg on Flower's Message API).

Differences from plain ``FedAvg``, each for privacy:

* averaging is **uniform** over sites: weighting by row counts would need the
  counts, which are private (a site may opt in to share them, but the default
  never uses them);
* each reply is checked against the agreed message format
  (:data:`shared.keys.SITE_REPLY_FIELDS`); anything else is discarded;
* declined or errored replies contribute nothing, and a round with fewer than
  ``min_sites`` valid updates aggregates nothing and raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from server.errors import ProtocolError, RoundFailedError
from server.identity import registered_name
from shared import keys

log = logging.getLogger("fedsynth.server")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SiteReply:
    """A validated reply: the site's public accounting and (if trained) its update."""

    node_id: int
    site: str
    trained: bool
    reason: str
    privacy: dict[str, float]
    accountant: str
    secure_mode: bool
    noise_seed: str
    update: StateDict | None
    masked: npt.NDArray[np.uint64] | None = None  # under secure aggregation, instead of update


def parse_reply(msg: Message, expected_keys: set[str], *, masked: bool = False) -> SiteReply:
    """Check one reply against the agreed format and extract its content.

    With ``masked`` (secure aggregation) the format is
    :data:`shared.keys.SECAGG_REPLY_FIELDS`: a masked vector replaces the update.

    Raises
    ------
    ProtocolError
        If any record or field is outside :data:`shared.keys.SITE_REPLY_FIELDS`.
    """
    node = msg.metadata.src_node_id
    content = msg.content
    allowed_records = set(keys.SECAGG_REPLY_FIELDS if masked else keys.SITE_REPLY_FIELDS)
    update_key = keys.MASKED_UPDATE if masked else keys.UPDATE_ARRAYS
    extra = set(content.keys()) - allowed_records
    if extra:
        raise ProtocolError(f"node {node} sent unexpected record(s) {sorted(extra)}")
    metrics = {
        k: v for k, v in dict(content[keys.PRIVACY_METRICS]).items() if isinstance(v, int | float)
    }
    allowed_metrics = set(keys.SITE_REPLY_FIELDS[keys.PRIVACY_METRICS]) | set(
        keys.OPT_IN_FIELDS[keys.PRIVACY_METRICS]
    )
    if set(metrics) - allowed_metrics:
        raise ProtocolError(
            f"node {node} sent unexpected metric(s) {sorted(set(metrics) - allowed_metrics)}"
        )
    info = dict(content[keys.SITE_INFO])
    if set(info) - set(keys.SITE_REPLY_FIELDS[keys.SITE_INFO]):
        raise ProtocolError(f"node {node} sent unexpected site field(s)")
    trained = info.get(keys.STATUS) == keys.STATUS_TRAINED
    update, vector = None, None
    if trained:
        if update_key not in content:
            raise ProtocolError(f"node {node} reported 'trained' without an update")
        arrays = content[update_key]
        if not isinstance(arrays, ArrayRecord):
            raise ProtocolError(f"node {node} sent an update that is not an ArrayRecord")
        if masked:
            if set(arrays) != {keys.MASKED_VECTOR}:
                raise ProtocolError(f"node {node} sent a malformed masked update")
            vector = arrays[keys.MASKED_VECTOR].numpy()
            if vector.dtype not in (np.uint32, np.uint64) or vector.ndim != 1:
                raise ProtocolError(f"node {node} sent a masked update that is not uint32/64[n]")
            vector = vector.astype(np.uint64)
        else:
            update = arrays.to_torch_state_dict()
            if set(update) != expected_keys:
                raise ProtocolError(f"node {node} sent an update for a different model")
    elif update_key in content:
        raise ProtocolError(f"node {node} declined but still sent an update")
    return SiteReply(
        node_id=node,
        site=registered_name(node, str(info.get(keys.SITE_NAME, f"node-{node}"))),
        trained=trained,
        reason=str(info.get(keys.REASON, "")),
        privacy={k: float(v) for k, v in metrics.items()},
        accountant=str(info.get(keys.ACCOUNTANT, "")),
        secure_mode=bool(info.get(keys.SECURE_MODE, False)),
        noise_seed=str(info.get(keys.NOISE_SEED, "unknown")),
        update=update,
        masked=vector,
    )


def mean_update(updates: list[StateDict]) -> StateDict:
    """Uniform average of site updates."""
    return {k: torch.stack([u[k].float() for u in updates]).mean(dim=0) for k in updates[0]}


class SiteAveraging(FedAvg):
    """FedAvg over clipped site updates with strict reply checks and a quorum.

    Parameters
    ----------
    min_sites : int
        Minimum number of valid updates for a round to count.
    expected_keys : set of str
        Parameter names of the generator (updates must match exactly).
    """

    def __init__(self, *, min_sites: int, expected_keys: set[str]) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=min_sites,
            min_available_nodes=min_sites,
            arrayrecord_key=keys.GLOBAL_ARRAYS,
            configrecord_key=keys.TRAIN_CONFIG,
        )
        self.min_sites = min_sites
        self.expected_keys = expected_keys
        self.last_replies: list[SiteReply] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the valid updates; raise if fewer than ``min_sites`` arrived."""
        parsed = self.parse_replies(server_round, replies)
        # Sorted by site so the float sum, and hence a seeded run, is independent of
        # the order in which replies arrived.
        ordered = sorted(parsed, key=lambda r: (r.site, r.node_id))
        updates = [r.update for r in ordered if r.trained and r.update is not None]
        self.check_quorum(server_round, parsed, len(updates))
        agg = mean_update(updates)
        metrics: dict[str, Any] = {"sites-trained": len(updates), "sites-replied": len(parsed)}
        return ArrayRecord(agg), MetricRecord(metrics)

    def parse_replies(
        self, server_round: int, replies: Iterable[Message], *, masked: bool = False
    ) -> list[SiteReply]:
        """The valid replies (see :func:`parse_reply`); the others are logged and dropped."""
        parsed: list[SiteReply] = []
        for msg in replies:
            if msg.has_error():
                log.warning(
                    "round %d: node %d failed: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    msg.error.reason,
                )
                continue
            try:
                parsed.append(parse_reply(msg, self.expected_keys, masked=masked))
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                log.warning("round %d: reply discarded: %s", server_round, exc)
        self.last_replies = parsed
        for rep in parsed:
            if not rep.trained:
                log.warning("round %d: site %s declined: %s", server_round, rep.site, rep.reason)
        return parsed

    def check_quorum(self, server_round: int, parsed: list[SiteReply], n_updates: int) -> None:
        """Raise :class:`RoundFailedError` if fewer than ``min_sites`` updates are usable."""
        if n_updates < self.min_sites:
            declined = "; ".join(f"{r.site}: {r.reason}" for r in parsed if not r.trained)
            raise RoundFailedError(
                f"round {server_round}: only {n_updates} valid site update(s), fewer than the "
                f"minimum of {self.min_sites}; nothing was aggregated for this round."
                + (f" Declines: {declined}" if declined else " Missing sites timed out or failed.")
                + " Fix the sites and rerun with the same --out to resume from the last checkpoint"
                + " (a site whose budget is spent never trains again: remove it with `fedsynth"
                + " server sites remove NAME --state-dir DIR`, or lower --min-sites)."
            )
        if n_updates < len(parsed) or n_updates == 1:
            log.warning("round %d: aggregating %d site update(s)", server_round, n_updates)
