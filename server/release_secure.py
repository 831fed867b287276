"""One-shot releases of counts under secure aggregation: the server learns only their sum.

Used for a release family's stages (``dp-marginal``) and for the DP encoder's
histograms. The four message stages of :mod:`server.secagg_stages`, with fresh keys each time:

1. ``train.secagg_setup`` and 2. ``train.secagg_share_keys``: as for a training round;
3. the stage's own message (``train.release_share`` with the model as fitted so far
   and the public :class:`shared.release_request.ReleaseRequest`, or
   ``train.encoder_share`` with the histogram request) plus the peers; each site
   charges its ledger and answers with its masked ring share
   (:func:`client.oneshot.answer_secure_release`);
4. ``train.secagg_unmask``: as for a training round.

The request travels with the key set-up, so a site that could not afford the
release refuses there, and a stage short of its quorum stops before any site is
charged. With ``K = noise_sites > 1`` (noise placement ``distributed``) a stage in
which fewer than K shares arrive later (a site lost after the set-up) is aborted
*before* unmasking: their sum would carry less than the central noise. The sites
that sent a share keep the charge, and the run stops with :class:`RoundFailedError`.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, RecordDict
from flwr.serverapp import Grid

from server.errors import ProtocolError, RoundFailedError
from server.oneshot import Parsed, parse_release_reply
from server.secagg_stages import (
    SPENT_SITE_ADVICE,
    SecureRoundInfo,
    open_round,
    require_noise_shares,
    sample_index,
)
from shared import keys
from shared.config import RunSettings
from shared.distdp.release import release_codec
from shared.models.release import ReleaseFamily
from shared.release_request import ReleaseRequest
from shared.secagg import (
    SecAggAbortedError,
    SecAggError,
    SetupRefusedError,
    required_threshold,
)

log = logging.getLogger("fedsynth.server")


def secure_release(
    grid: Grid, settings: RunSettings, family: ReleaseFamily, request: ReleaseRequest
) -> tuple[list[Parsed], list[str], np.ndarray, SecureRoundInfo]:
    """One release stage of ``family`` under secure aggregation (see :func:`secure_stage_sum`)."""
    config = cast("dict[str, ConfigRecordValues]", request.to_config())
    content = RecordDict(
        {
            keys.RELEASE_CONFIG: ConfigRecord(config),
            keys.GLOBAL_ARRAYS: ArrayRecord(family.state_dict()),
        }
    )
    return secure_stage_sum(
        grid,
        settings,
        label=f"release stage {request.stage}",
        message_type=keys.RELEASE_SHARE,
        content=content,
        length=request.length,
        noise_sites=request.noise_sites,
        grid_bits=request.grid_bits,
    )


def secure_stage_sum(
    grid: Grid,
    settings: RunSettings,
    *,
    label: str,
    message_type: str,
    content: RecordDict,
    length: int,
    noise_sites: int,
    grid_bits: int,
) -> tuple[list[Parsed], list[str], np.ndarray, SecureRoundInfo]:
    """Collect one one-shot release's shares under secure aggregation and decode their sum.

    ``content`` is the stage's request (the peers are added to it); every site answers
    ``message_type`` with a masked ring share of ``length`` counts on the grid
    2**-``grid_bits``, carrying 1/``noise_sites`` of the noise variance.

    Returns
    -------
    parsed : list
        Every valid reply's public facts (site order); the values are masked.
    senders : list of str
        The sites whose shares are in the sum, sorted.
    total : numpy.ndarray
        The sum of the senders' noisy counts (float).
    info : SecureRoundInfo
        The protocol's public facts for the report.

    Raises
    ------
    RoundFailedError
        Too few sites at some stage, fewer than K shares or ``min_sites`` inputs:
        nothing was unmasked.
    """
    timeout = settings.round_timeout
    index = sample_index(grid, settings.min_sites)
    codec = release_codec(grid_bits)
    try:
        opened = open_round(
            grid,
            index,
            threshold=required_threshold(len(index), settings.secagg_threshold),
            codec=codec.ring,
            label=f"{message_type}|{label}",
            params={},
            timeout=timeout,
            announce=(message_type, dict(content.config_records)),
            min_accepted=max(settings.min_sites, noise_sites),
        )
        content[keys.SECAGG] = opened.peers_record()
        replies = opened.send_inputs(grid, message_type, content, timeout)
        parsed: list[tuple[int, Parsed]] = []
        for node, rep in replies.items():
            try:
                parsed.append((index[node], _parse(rep, length)))
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                log.warning("%s: reply discarded: %s", label, exc)
        for _, (facts, values) in parsed:
            if values is None:
                log.warning("%s: site %s declined: %s", label, facts["site"], facts["reason"])
        survivors = opened.proto.collect_masked(
            {i: values for i, (_, values) in parsed if values is not None}
        )
        _check_inputs(settings, noise_sites, len(survivors), [p for _, p in parsed])
        total = codec.decode(opened.unmask(grid, survivors, timeout))
    except SetupRefusedError as exc:
        raise RoundFailedError(
            f"{label} stopped at the key set-up: {exc}. No site computed its statistics or "
            f"was charged for them. {SPENT_SITE_ADVICE}"
        ) from exc
    except SecAggAbortedError as exc:
        raise RoundFailedError(
            f"{label} aborted under secure aggregation: {exc}. Nothing was unmasked or fitted; "
            "every site that sent its share keeps this stage's ε charge. Bring the sites back "
            "and rerun with the same --out."
        ) from exc
    except SecAggError as exc:
        raise RoundFailedError(f"{label}: secure aggregation failed: {exc}") from exc
    senders = sorted(str(facts["site"]) for i, (facts, _) in parsed if i in survivors)
    info = SecureRoundInfo(
        opened.threshold, len(index), len(survivors), opened.dropped(survivors), codec.grid
    )
    return sorted((p for _, p in parsed), key=lambda p: str(p[0]["site"])), senders, total, info


def _parse(rep: Any, length: int) -> Parsed:
    return parse_release_reply(
        rep,
        fields=keys.RELEASE_SHARE_REPLY_FIELDS,
        record=(keys.MASKED_UPDATE, keys.MASKED_VECTOR),
        shape=(length,),
        masked=True,
    )


def _check_inputs(
    settings: RunSettings, noise_sites: int, inputs: int, parsed: list[Parsed]
) -> None:
    """Refuse to unmask a sum of fewer than K shares or fewer than ``min_sites`` inputs."""
    declined = "; ".join(f"{f['site']}: {f['reason']}" for f, v in parsed if v is None)
    require_noise_shares(inputs, noise_sites, what="stage", declined=declined)
    why = f" (declined: {declined})" if declined else ""
    if inputs < settings.min_sites:
        raise SecAggAbortedError(
            f"only {inputs} site input(s), fewer than the minimum of {settings.min_sites}{why}"
        )
