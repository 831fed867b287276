"""The stages every secure aggregation round shares, on the server (:mod:`shared.secagg`).

:func:`open_round` runs stages 1 and 2 (keys, then encrypted shares relayed per
recipient) with fresh keys; the caller sends its own stage-3 input message
(:meth:`OpenRound.send_inputs`: a training round, a distributed DP-SGD step or a
release) and unmasks the survivors' sum (:meth:`OpenRound.unmask`, stage 4).
:mod:`server.secagg` (training rounds), :mod:`server.distributed` and
:mod:`server.release_secure` build on them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.errors import ProtocolError
from server.identity import node_label
from shared import keys
from shared.secagg import (
    FixedPointCodec,
    PublicKeys,
    SecAggAbortedError,
    ServerRound,
    SetupRefusedError,
    UnmaskShares,
)
from shared.secagg.encoding import IntVector

log = logging.getLogger("fedsynth.server")
T = TypeVar("T")


@dataclass(frozen=True)
class SecureRoundInfo:
    """What the server learnt about the protocol in one round (goes into the report)."""

    threshold: int
    sampled: int
    survivors: int
    dropped_after_key_sharing: int
    quantisation_step: float
    #: Site (or node) → the public reason it declined: at the key set-up or with its input.
    declines: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        """For the round history of the report."""
        return {
            "threshold": self.threshold,
            "sites_sampled": self.sampled,
            "survivors": self.survivors,
            "dropped_after_key_sharing": self.dropped_after_key_sharing,
            "quantisation_step": self.quantisation_step,
        }


def _stage(
    grid: Grid,
    action: str,
    contents: dict[int, RecordDict],
    timeout: float,
    refusals: dict[int, str] | None = None,
) -> dict[int, Message]:
    """Send one message per node and return the error-free replies by node id.

    Each error reply's reason goes into ``refusals`` (node id → reason) when given.
    """
    msgs = [
        Message(content=c, dst_node_id=nid, message_type=f"train.{action}")
        for nid, c in contents.items()
    ]
    out: dict[int, Message] = {}
    for rep in grid.send_and_receive(msgs, timeout=timeout):
        if rep.has_error():
            log.warning(
                "%s: %s failed: %s", action, node_label(rep.metadata.src_node_id), rep.error.reason
            )
            if refusals is not None:
                refusals[rep.metadata.src_node_id] = rep.error.reason or "no reason given"
        else:
            out[rep.metadata.src_node_id] = rep
    return out


def _sa(msg: Message) -> ConfigRecord:
    rec = msg.content[keys.SECAGG]
    if not isinstance(rec, ConfigRecord):
        raise ProtocolError(f"node {msg.metadata.src_node_id} sent no secure aggregation record")
    return rec


def _roster_record(base: dict[str, object], roster: dict[int, PublicKeys]) -> ConfigRecord:
    peers = sorted(roster)
    return ConfigRecord(
        {
            **base,  # type: ignore[dict-item]
            keys.SA_PEERS: peers,
            keys.SA_C_PKS: [roster[p].c_pk for p in peers],
            keys.SA_S_PKS: [roster[p].s_pk for p in peers],
        }
    )


@dataclass
class OpenRound:
    """A secure round after stages 1 and 2: who shared keys, and the messages' common fields.

    Attributes
    ----------
    proto : ServerRound
        The protocol state (roster, routed ciphertexts).
    index : dict
        Node id → protocol index (1..N) of every sampled site.
    base : dict
        Fields every later stage's secure aggregation record carries (the context).
    inboxes : dict
        Protocol index → the ciphertexts routed to it (the sites that may send input).
    threshold : int
        t: the fewest inputs the server can unmask.
    """

    proto: ServerRound
    index: dict[int, int]
    base: dict[str, object]
    inboxes: dict[int, dict[int, bytes]]
    threshold: int
    #: Node id → the reason it refused the key set-up (the round went on without it).
    refused: dict[int, str] = field(default_factory=dict)

    @property
    def node_of(self) -> dict[int, int]:
        """Protocol index → node id."""
        return {i: n for n, i in self.index.items()}

    def peers_record(self) -> ConfigRecord:
        """Stage 3's secure aggregation record: the sites whose key shares were routed."""
        return _roster_record(self.base, self.proto.share_senders)

    def send_inputs(
        self, grid: Grid, action: str, content: RecordDict, timeout: float
    ) -> dict[int, Message]:
        """Stage 3: ``content`` to every site with an inbox; the error-free replies."""
        node_of = self.node_of
        return _stage(grid, action, {node_of[i]: content for i in self.inboxes}, timeout)

    def unmask(self, grid: Grid, survivors: set[int], timeout: float) -> IntVector:
        """Stage 4: ask the survivors for shares and rebuild the masks; the ring sum."""
        unmask = _unmask_requests(self.base, survivors, self.inboxes, self.node_of)
        replies = _stage(grid, keys.SECAGG_UNMASK, unmask, timeout)
        return self.proto.unmask(_read(replies, self.index, _shares))

    def dropped(self, survivors: set[int]) -> int:
        """Sites that shared keys but sent no usable input."""
        return len(set(self.inboxes) - survivors)

    def declines(self, declined_inputs: dict[str, str]) -> dict[str, str]:
        """Every public decline of the round: refusals at the key set-up (by registered
        site, or node in a simulation) and ``declined_inputs`` (site → reason)."""
        return {**{node_label(n): r for n, r in self.refused.items()}, **declined_inputs}


def require_noise_shares(arrived: int, noise_sites: int, *, what: str, declined: str) -> None:
    """Abort before unmasking when fewer than K noise shares arrived.

    Their sum would carry less than the noise each sender was charged for.

    Raises
    ------
    SecAggAbortedError
        ``arrived < noise_sites``; ``declined`` lists the declines, if any.
    """
    if arrived < noise_sites:
        raise SecAggAbortedError(
            f"only {arrived} of the K = {noise_sites} noise shares arrived; their sum would "
            f"carry too little noise, so the {what} is aborted before unmasking"
            + (f" (declined: {declined})" if declined else "")
        )


def sample_index(grid: Grid, min_sites: int) -> dict[int, int]:
    """Every connected node (at least ``min_sites``, waiting for them) → protocol index."""
    n_all = len(list(grid.get_node_ids()))
    node_ids, _ = sample_nodes(grid, min_sites, max(n_all, min_sites))
    return {nid: i + 1 for i, nid in enumerate(sorted(node_ids))}


#: What the coordinator can do when sites refused a set-up for their budget.
SPENT_SITE_ADVICE = (
    "A site whose budget is spent never takes part again: remove it with "
    "`fedsynth server sites remove NAME --state-dir DIR`, or lower --min-sites; then rerun with the same "
    "--out to resume from the last checkpoint."
)


def open_round(
    grid: Grid,
    index: dict[int, int],
    *,
    threshold: int,
    codec: FixedPointCodec,
    label: str,
    params: dict[str, object],
    timeout: float,
    announce: tuple[str, dict[str, ConfigRecord]] | None = None,
    min_accepted: int = 0,
) -> OpenRound:
    """Stages 1 and 2 with fresh keys; ``params`` are extra public fields of stage 1.

    ``announce`` is the stage-3 message this set-up opens: its type and its config
    records, sent with the set-up so that a site that could not afford the mechanism
    refuses before any site computes or is charged (:mod:`client.precheck`).

    Raises
    ------
    SetupRefusedError
        Sites refused the set-up and fewer than ``threshold`` (or ``min_accepted``)
        accepted: no site has computed anything yet. The message names the refusals.
    SecAggError
        Fewer than ``threshold`` sites answered a stage.
    """
    context = f"fedsynth|{label}|{secrets.token_hex(16)}".encode()
    proto = ServerRound(threshold=threshold, codec=codec, context=context)
    base: dict[str, object] = {keys.SA_CONTEXT: context}
    common = {
        **params,
        keys.SA_THRESHOLD: threshold,
        keys.SA_NUM_SITES: len(index),
        keys.SA_CONTEXT: context,
    }
    records: dict[str, ConfigRecord] = {}
    if announce is not None:
        common[keys.SA_STAGE], records = announce
    setup = {
        nid: RecordDict(
            {keys.SECAGG: ConfigRecord({**common, keys.SA_INDEX: i}), **records}  # type: ignore[dict-item]
        )
        for nid, i in index.items()
    }
    refusals: dict[int, str] = {}
    accepted = _stage(grid, keys.SECAGG_SETUP, setup, timeout, refusals)
    needed = max(threshold, min_accepted)
    if len(accepted) < needed and refusals:
        raise SetupRefusedError(
            f"only {len(accepted)} of {len(index)} site(s) accepted the key set-up, fewer "
            f"than the {needed} needed; refused: "
            + "; ".join(f"node {n}: {r}" for n, r in sorted(refusals.items()))
        )
    roster = proto.register_keys(_read(accepted, index, _keys))
    node_of = {i: n for n, i in index.items()}
    # The server relays ciphertexts it cannot read.
    rec = RecordDict({keys.SECAGG: _roster_record(base, roster)})
    replies = _stage(grid, keys.SECAGG_SHARE_KEYS, {node_of[i]: rec for i in roster}, timeout)
    inboxes = proto.route_shares(_read(replies, index, _ciphertexts))
    return OpenRound(proto, index, base, inboxes, threshold, refusals)


def _unmask_requests(
    base: dict[str, object],
    survivors: set[int],
    inboxes: dict[int, dict[int, bytes]],
    node_of: dict[int, int],
) -> dict[int, RecordDict]:
    """Stage 4's message per survivor: who survived, who dropped, and its inbox of shares."""
    dropped = sorted(set(inboxes) - survivors)
    out = {}
    for i in survivors:
        senders = sorted(inboxes[i])
        fields = {
            **base,
            keys.SA_SURVIVORS: sorted(survivors),
            keys.SA_DROPPED: dropped,
            keys.SA_PEERS: senders,
            keys.SA_CIPHERTEXTS: [inboxes[i][s] for s in senders],
        }
        out[node_of[i]] = RecordDict({keys.SECAGG: ConfigRecord(fields)})  # type: ignore[arg-type]
    return out


def _read(
    replies: dict[int, Message], index: dict[int, int], parse: Callable[[Message], T]
) -> dict[int, T]:
    """Parse each reply by protocol index; a malformed one is logged and counts as a drop."""
    out: dict[int, T] = {}
    for node, msg in replies.items():
        try:
            out[index[node]] = parse(msg)
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            log.warning("secure aggregation: reply of node %d discarded: %s", node, exc)
    return out


def _keys(msg: Message) -> PublicKeys:
    cfg = _sa(msg)
    c_pk, s_pk = cfg[keys.SA_C_PK], cfg[keys.SA_S_PK]
    if not (isinstance(c_pk, bytes) and isinstance(s_pk, bytes)):
        raise ProtocolError("public keys must be bytes")
    return PublicKeys(c_pk, s_pk)


def _ciphertexts(msg: Message) -> dict[int, bytes]:
    cfg = _sa(msg)
    to, cts = cast(list[int], cfg[keys.SA_PEERS]), cast(list[bytes], cfg[keys.SA_CIPHERTEXTS])
    return dict(zip(to, cts, strict=True))


def _shares(msg: Message) -> UnmaskShares:
    cfg = _sa(msg)
    return UnmaskShares(
        seed_shares=dict(
            zip(
                cast(list[int], cfg[keys.SA_SEED_OWNERS]),
                cast(list[bytes], cfg[keys.SA_SEED_SHARES]),
                strict=True,
            )
        ),
        key_shares=dict(
            zip(
                cast(list[int], cfg[keys.SA_KEY_OWNERS]),
                cast(list[bytes], cfg[keys.SA_KEY_SHARES]),
                strict=True,
            )
        ),
    )
