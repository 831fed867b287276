"""One federation round under secure aggregation: four stages of Flower messages.

The server side of :mod:`shared.secagg` (Bonawitz et al., CCS 2017). Per round:

1. ``train.secagg_setup``: each sampled site gets its index and the round's
   parameters, and answers with two public keys (roster ``U1``);
2. ``train.secagg_share_keys``: each site gets the roster and answers with one
   AES-GCM ciphertext per peer; the server regroups them per recipient (``U2``);
3. ``train.secagg_train``: the usual train message plus ``U2``; each site trains,
   charges its ledger, and answers with its public accounting and its *masked*
   quantised update (``U3``);
4. ``train.secagg_unmask``: survivors get ``U3``, the dropped list and their inbox,
   and answer with shares; the server rebuilds the masks and decodes the sum.

Each stage waits at most ``round_timeout``; a site that does not answer drops out.
Fewer than ``t`` sites at any stage abort the round with :class:`RoundFailedError`:
the server then holds only masked vectors and nothing is aggregated or released.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from server.errors import RoundFailedError
from server.secagg_stages import SPENT_SITE_ADVICE, SecureRoundInfo, open_round, sample_index
from server.strategy import SiteAveraging, StateDict
from shared import keys
from shared.config import RunSettings
from shared.secagg import (
    FixedPointCodec,
    SecAggAbortedError,
    SecAggError,
    SetupRefusedError,
    required_threshold,
)
from shared.secagg.vectors import unflatten_state

log = logging.getLogger("fedsynth.server")


def secure_round(
    grid: Grid,
    strategy: SiteAveraging,
    server_round: int,
    state: StateDict,
    train_config: ConfigRecord,
    settings: RunSettings,
) -> tuple[StateDict, SecureRoundInfo]:
    """Run one round under secure aggregation; returns the mean update and the round's facts.

    ``strategy.last_replies`` holds the sites' public accounting afterwards.

    Raises
    ------
    RoundFailedError
        Too few sites at some stage (or fewer than ``min_sites`` updates):
        nothing was aggregated.
    """
    index = sample_index(grid, strategy.min_sites)
    timeout = settings.round_timeout
    try:
        t = required_threshold(len(index), settings.secagg_threshold)
        codec = FixedPointCodec(
            clip=settings.update_clip_norm, bits=settings.secagg_bits, max_sites=len(index)
        )
        opened = open_round(
            grid,
            index,
            threshold=t,
            codec=codec,
            label=f"round={server_round}",
            params={keys.SA_BITS: codec.bits, keys.SA_CLIP: codec.clip},
            timeout=timeout,
            announce=(keys.SECAGG_TRAIN, {keys.TRAIN_CONFIG: train_config}),
            min_accepted=strategy.min_sites,
        )
        # Stage 3: train and send the masked update.
        train = RecordDict(
            {
                keys.GLOBAL_ARRAYS: ArrayRecord(state),
                keys.TRAIN_CONFIG: train_config,
                keys.SECAGG: opened.peers_record(),
            }
        )
        replies = opened.send_inputs(grid, keys.SECAGG_TRAIN, train, timeout)
        parsed = strategy.parse_replies(server_round, replies.values(), masked=True)
        masked = {index[r.node_id]: r.masked for r in parsed if r.masked is not None}
        if len(masked) < strategy.min_sites:  # name the declines before the protocol aborts
            strategy.check_quorum(server_round, parsed, len(masked))
        survivors = opened.proto.collect_masked(masked)
        strategy.check_quorum(server_round, parsed, len(survivors))
        total = opened.unmask(grid, survivors, timeout)
        mean = codec.decode_sum(total, len(survivors)) / len(survivors)
    except SetupRefusedError as exc:
        raise RoundFailedError(
            f"round {server_round} stopped before training: {exc}. No site trained or was "
            f"charged for it. {SPENT_SITE_ADVICE}"
        ) from exc
    except SecAggAbortedError as exc:
        raise RoundFailedError(
            f"round {server_round} aborted under secure aggregation: {exc}. Nothing was "
            "aggregated or released; sites that trained keep this round's ε charge in their "
            "ledgers. Bring the sites back and rerun with the same --out to resume."
        ) from exc
    except SecAggError as exc:
        raise RoundFailedError(f"round {server_round}: secure aggregation failed: {exc}") from exc
    declined = {r.site: r.reason for r in parsed if not r.trained}
    info = SecureRoundInfo(
        t,
        len(index),
        len(survivors),
        opened.dropped(survivors),
        codec.step,
        opened.declines(declined),
    )
    log.info(
        "round %d: secure sum of %d site(s) (threshold %d, %d dropped after key sharing)",
        server_round,
        len(survivors),
        t,
        info.dropped_after_key_sharing,
    )
    return unflatten_state(mean, state), info
