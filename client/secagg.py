"""The site's side of secure aggregation over Flower messages (stages in :mod:`shared.secagg`).

The site's secrets for the round (two X25519 private keys, the self-mask seed)
live only in the ClientApp's ``context.state``, which the SuperNode keeps on the
site's machine between messages of a run; they are deleted after the unmask stage.
The train stage trains and charges the ledger exactly like a plain round, then
replaces the clipped update with its masked, quantised encoding.

Every stage checks that the message belongs to the round the site set up, and
never trains before it knows its place in the protocol (so a site that cannot
take part declines before its ledger is charged).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from client.errors import public_reason
from shared import keys
from shared.errors import FedsynthError
from shared.secagg import (
    FixedPointCodec,
    PublicKeys,
    SecAggAbortedError,
    SecAggProtocolError,
    SiteSecrets,
    site_mask,
    site_setup,
    site_share_keys,
    site_unmask,
)

log = logging.getLogger("fedsynth.client")
STATE = "secagg-state"  # key in context.state; never sent
ERROR_CODE = 4100  # Flower error code of a secure aggregation refusal


def _config(msg: Message) -> ConfigRecord:
    rec = msg.content.get(keys.SECAGG) if keys.SECAGG in msg.content else None
    if not isinstance(rec, ConfigRecord):
        raise SecAggProtocolError("the message holds no secure aggregation record")
    return rec


#: Set in a round's state once the site has answered its input stage.
INPUT_SENT = "input-sent"


def _state(msg: Message, context: Context) -> ConfigRecord:
    """This round's stored state; refuses a message for another round."""
    state = context.state.get(STATE) if STATE in context.state else None
    if not isinstance(state, ConfigRecord):
        raise SecAggProtocolError(
            "this site has no secure aggregation state for the round (it restarted or missed "
            "the setup stage); it sits this round out"
        )
    if state[keys.SA_CONTEXT] != _config(msg)[keys.SA_CONTEXT]:
        raise SecAggProtocolError("the message belongs to another secure aggregation round")
    return state


def _secrets(state: ConfigRecord) -> SiteSecrets:
    return SiteSecrets(
        index=cast(int, state[keys.SA_INDEX]),
        c_sk=cast(bytes, state["c-sk"]),
        s_sk=cast(bytes, state["s-sk"]),
        seed=cast(bytes, state["seed"]),
    )


def _roster(rec: ConfigRecord) -> dict[int, PublicKeys]:
    peers = cast(list[int], rec[keys.SA_PEERS])
    c_pks, s_pks = cast(list[bytes], rec[keys.SA_C_PKS]), cast(list[bytes], rec[keys.SA_S_PKS])
    if not len(peers) == len(c_pks) == len(s_pks):
        raise SecAggProtocolError("the roster's lists have different lengths")
    return {p: PublicKeys(c, s) for p, c, s in zip(peers, c_pks, s_pks, strict=True)}


def _refuse(msg: Message, exc: Exception) -> Message:
    log.error("secure aggregation: %s", exc)
    # Protocol faults name only indices and lengths; anything else is reduced to its kind.
    protocol = isinstance(exc, SecAggProtocolError | SecAggAbortedError)
    reason = str(exc) if protocol else public_reason(exc)
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)


def handle_setup(
    msg: Message, context: Context, precheck: Callable[[], None] | None = None
) -> Message:
    """Stage 1: draw this round's keys and seed; reply with the two public keys.

    ``precheck`` runs first; its :class:`FedsynthError` refuses the round (e.g. a
    site that cannot afford the announced training drops out before anyone trains).
    """
    try:
        if precheck is not None:
            precheck()
        cfg = _config(msg)
        me = site_setup(cast(int, cfg[keys.SA_INDEX]))
    except (FedsynthError, KeyError, ValueError) as exc:
        return _refuse(msg, exc)
    state: dict[str, Any] = {k: cfg[k] for k in cfg}
    state.update({"c-sk": me.c_sk, "s-sk": me.s_sk, "seed": me.seed})
    context.state[STATE] = ConfigRecord(state)
    pub = me.public
    reply = ConfigRecord({keys.SA_C_PK: pub.c_pk, keys.SA_S_PK: pub.s_pk})
    return Message(RecordDict({keys.SECAGG: reply}), reply_to=msg)


def handle_share_keys(msg: Message, context: Context) -> Message:
    """Stage 2: encrypted shares of the seed and the masking key, one per peer."""
    try:
        state, cfg = _state(msg, context), _config(msg)
        roster = _roster(cfg)
        sent = site_share_keys(
            _secrets(state),
            roster,
            threshold=cast(int, state[keys.SA_THRESHOLD]),
            context=cast(bytes, state[keys.SA_CONTEXT]),
        )
    except (FedsynthError, KeyError, ValueError) as exc:
        return _refuse(msg, exc)
    for k in (keys.SA_PEERS, keys.SA_C_PKS, keys.SA_S_PKS):
        state[k] = cfg[k]
    peers = sorted(sent)
    reply = ConfigRecord({keys.SA_PEERS: peers, keys.SA_CIPHERTEXTS: [sent[p] for p in peers]})
    return Message(RecordDict({keys.SECAGG: reply}), reply_to=msg)


def participation(
    msg: Message, context: Context, *, noise_sites: int = 1
) -> tuple[ConfigRecord, SiteSecrets, dict[int, PublicKeys]]:
    """Stage 3 checks: this round's state, the site's secrets and the peers whose keys arrived.

    ``noise_sites``: K, when the site's input carries only 1/K of the noise; fewer
    than K peers would let the server unmask a sum with less than the charged noise.

    Raises
    ------
    SecAggProtocolError, SecAggAbortedError
        The site's shares were not relayed, or fewer peers than the threshold (or
        than K) shared keys, or it already answered this round's input request: the
        site must not compute (nor charge) anything.
    """
    state, cfg = _state(msg, context), _config(msg)
    roster = _roster(
        ConfigRecord({k: state[k] for k in (keys.SA_PEERS, keys.SA_C_PKS, keys.SA_S_PKS)})
    )
    peers = {p: roster[p] for p in cast(list[int], cfg[keys.SA_PEERS]) if p in roster}
    me = _secrets(state)
    if me.index not in peers:
        raise SecAggProtocolError("this site's shares were not relayed; it sits this round out")
    if len(peers) < cast(int, state[keys.SA_THRESHOLD]):
        raise SecAggAbortedError(
            f"only {len(peers)} site(s) shared keys, fewer than the threshold; "
            "this site does not train or send anything this round"
        )
    if len(peers) < noise_sites:
        raise SecAggAbortedError(
            f"only {len(peers)} site(s) take part in this secure sum, fewer than the "
            f"K = {noise_sites} the noise is split over; this site computes and sends nothing"
        )
    # One input per secure round: two inputs under the same pairwise masks would let
    # the server subtract them and see their difference unmasked (with a 1/K share of
    # the noise each, under distributed noise). Claimed before computing anything.
    if INPUT_SENT in state:
        raise SecAggProtocolError(
            "this site already answered this secure round's input request; a second "
            "request under the same masks is refused (nothing computed or charged)"
        )
    state[INPUT_SENT] = True
    return state, me, peers


def refuse(msg: Message, exc: Exception) -> Message:
    """The Flower error reply of a site that sits a secure round out (reason logged)."""
    return _refuse(msg, exc)


def handle_masked_train(msg: Message, context: Context, train: Callable[[], RecordDict]) -> Message:
    """Stage 3: train (``train`` builds the plain reply), then mask the update in it.

    ``train`` runs only once the site knows it takes part in this round.
    """
    try:
        state, me, peers = participation(msg, context)
    except (FedsynthError, KeyError, ValueError) as exc:
        return _refuse(msg, exc)
    content = train()  # charges the ledger when the site trains
    if keys.UPDATE_ARRAYS not in content:
        return Message(content, reply_to=msg)  # declined: nothing to mask
    arrays = content.pop(keys.UPDATE_ARRAYS)
    # Whether this site's own update hit the bound says something of that update alone,
    # which the server must only see summed: not sent under secure aggregation.
    metrics = content[keys.PRIVACY_METRICS]
    if isinstance(metrics, MetricRecord) and keys.UPDATE_NORM_CLIPPED in metrics:
        del metrics[keys.UPDATE_NORM_CLIPPED]
    try:
        codec = FixedPointCodec(
            clip=cast(float, state[keys.SA_CLIP]),
            bits=cast(int, state[keys.SA_BITS]),
            max_sites=cast(int, state[keys.SA_NUM_SITES]),
        )
        from shared.secagg.vectors import flatten_state  # torch: only when training

        vector = flatten_state(cast(ArrayRecord, arrays).to_torch_state_dict())
        rng = np.random.default_rng(secrets.randbits(128))
        masked = site_mask(
            me,
            codec.encode(vector, rng),
            peers,
            codec=codec,
            context=cast(bytes, state[keys.SA_CONTEXT]),
        )
    except Exception as exc:
        # The ledger was charged; the update is withheld (a dropout for the protocol).
        return _refuse(msg, exc)
    content[keys.MASKED_UPDATE] = ArrayRecord({keys.MASKED_VECTOR: Array(codec.to_wire(masked))})
    return Message(content, reply_to=msg)


def handle_unmask(msg: Message, context: Context) -> Message:
    """Stage 4: reveal, per peer, the share of its seed (survivor) or of its key (dropped)."""
    try:
        state, cfg = _state(msg, context), _config(msg)
    except (FedsynthError, KeyError) as exc:
        return _refuse(msg, exc)
    # One answer per round: a second request could ask for the other kind of share.
    del context.state[STATE]
    try:
        roster = _roster(
            ConfigRecord({k: state[k] for k in (keys.SA_PEERS, keys.SA_C_PKS, keys.SA_S_PKS)})
        )
        senders = cast(list[int], cfg[keys.SA_PEERS])
        cts = cast(list[bytes], cfg[keys.SA_CIPHERTEXTS])
        answer = site_unmask(
            _secrets(state),
            roster,
            dict(zip(senders, cts, strict=True)),
            survivors=set(cast(list[int], cfg[keys.SA_SURVIVORS])),
            dropped=set(cast(list[int], cfg[keys.SA_DROPPED])),
            threshold=cast(int, state[keys.SA_THRESHOLD]),
            context=cast(bytes, state[keys.SA_CONTEXT]),
        )
    except (FedsynthError, KeyError, ValueError) as exc:
        return _refuse(msg, exc)
    seeds, skeys = sorted(answer.seed_shares), sorted(answer.key_shares)
    reply = ConfigRecord(
        {
            keys.SA_SEED_OWNERS: seeds,
            keys.SA_SEED_SHARES: [answer.seed_shares[i] for i in seeds],
            keys.SA_KEY_OWNERS: skeys,
            keys.SA_KEY_SHARES: [answer.key_shares[i] for i in skeys],
        }
    )
    return Message(RecordDict({keys.SECAGG: reply}), reply_to=msg)
