"""The site's part of the DP encoder stage: one noisy histogram release, charged first.

Order of operations, each step failing closed (as for a training round):

1. load the site's schema and check its fingerprint equals the server's;
2. load and validate the table (a bad table stops here: nothing charged or sent);
3. under the ledger lock (:func:`client.oneshot.charge_and_release`): check that
   one Gaussian release at σ_h (recorded as ``(σ_h, q = 1, 1 step)``, with the
   sensitivity √d in place of the clip norm) fits the remaining budget, add the
   noise, record the release durably;
4. only then reply with the noisy counts.

The raw counts never leave this module; only ``counts + N(0, (σ_h √d)²)`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message, RecordDict

from client.errors import SiteConfigError
from client.oneshot import (
    ReleaseResult,
    answer_release,
    answer_secure_release,
    charge_and_release,
    release_reply,
)
from client.settings import SiteSettings
from shared import keys
from shared.distdp.release import release_share
from shared.dp_quantile import (
    HistogramRequest,
    add_histogram_noise,
    column_histogram,
    histogram_sensitivity,
)
from shared.schema import Schema
from shared.tables import load_table

log = logging.getLogger("fedsynth.client")
ENCODER_ROUND = 0  # ledger round number of the encoder release (training rounds start at 1)


def raw_histograms(site: SiteSettings, request: HistogramRequest) -> np.ndarray:
    """Steps 1–2: the site's exact ``(numeric columns, bins)`` counts (never sent)."""
    schema = Schema.load(site.schema_path)
    if schema.fingerprint() != request.schema_fingerprint:
        raise SiteConfigError(
            f"the site's schema {site.schema_path} (fingerprint {schema.fingerprint()[:12]}) "
            f"differs from the server's ({request.schema_fingerprint[:12]}); install the "
            "consortium's current schema at this site"
        )
    frame = load_table(site.data_path, schema)
    numeric = [c for c in schema.columns if c.is_numeric]
    if not numeric:
        raise SiteConfigError("the schema has no numeric column; the run should use 'minmax'")
    return np.stack(
        [
            column_histogram(
                frame[c.name].to_numpy(dtype=np.float64, na_value=np.nan),
                minimum=c.minimum,
                maximum=c.maximum,
                bins=request.bins,
                atoms=c.atoms,
            )
            for c in numeric
        ]
    )


def release_histograms(
    site: SiteSettings,
    request: HistogramRequest,
    counts: np.ndarray,
    *,
    run: str,
    share: bool = False,
) -> ReleaseResult:
    """Step 3: budget check, noise, durable ledger record (in that order).

    ``share``: return the flattened counts plus discrete Gaussian noise of the same
    std σ_h√d as a ring share for secure aggregation (:mod:`shared.distdp.release`);
    the ledger records the same ``(σ_h, q = 1, 1 step)`` either way.
    """
    sensitivity = histogram_sensitivity(counts.shape[0])
    if share:

        def noisy(rng: np.random.Generator) -> np.ndarray:
            return release_share(
                counts.ravel(),
                noise_multiplier=request.noise_multiplier,
                sensitivity=sensitivity,
                noise_sites=1,
                grid_bits=0,
                rng=rng,
            )
    else:

        def noisy(rng: np.random.Generator) -> np.ndarray:
            return add_histogram_noise(counts, noise_multiplier=request.noise_multiplier, rng=rng)

    result = charge_and_release(
        site,
        noise_multiplier=request.noise_multiplier,
        sensitivity=sensitivity,
        accountant=request.accountant,
        ledger_round=ENCODER_ROUND,
        run=run,
        noisy=noisy,
    )
    if result.sent:
        log.info(
            "site %s: released noisy histograms of %d numeric column(s) (σ_h=%.4g), "
            "cumulative ε=%.4f",
            site.site_name,
            counts.shape[0],
            request.noise_multiplier,
            result.epsilon,
        )
    return result


def reply_content(
    site: SiteSettings | None,
    request: HistogramRequest | None,
    result: ReleaseResult,
    *,
    masked: bool = False,
) -> RecordDict:
    """The reply: only the fields in :data:`shared.keys.ENCODER_REPLY_FIELDS`.

    ``masked``: the values are the flattened, masked ring share
    (:data:`shared.keys.RELEASE_SHARE_REPLY_FIELDS`).
    """
    d = 0
    if result.noisy is not None and request is not None:
        d = result.noisy.size // request.bins if masked else result.noisy.shape[0]
    return release_reply(
        site,
        result,
        noise_multiplier=request.noise_multiplier if request else 0.0,
        sensitivity=histogram_sensitivity(d) if d else 0.0,
        accountant=request.accountant if request else "",
        schema_fingerprint=request.schema_fingerprint if request else "",
        record=(keys.MASKED_UPDATE, keys.MASKED_VECTOR)
        if masked
        else (keys.HISTOGRAM_ARRAYS, keys.HISTOGRAM_COUNTS),
    )


def handle_histogram(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Answer the encoder stage (errors become a decline with a safe reason)."""
    return answer_release(
        msg,
        context,
        public_reason,
        stage="encoder histograms",
        parse=_parse,
        run_stage=lambda site, request, _content, run: release_histograms(
            site, request, raw_histograms(site, request), run=run
        ),
        reply=reply_content,
    )


def handle_histogram_share(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Stage 3 of the secure encoder stage: the masked share of the noisy histograms."""
    return answer_secure_release(
        msg,
        context,
        public_reason,
        stage="secure encoder histograms",
        parse=_parse,
        noise_sites=lambda _request: 1,
        grid_bits=lambda _request: 0,
        run_stage=lambda site, request, _content, run: release_histograms(
            site, request, raw_histograms(site, request), run=run, share=True
        ),
        reply=lambda site, request, result: reply_content(site, request, result, masked=True),
    )


def _parse(content: RecordDict) -> HistogramRequest:
    return HistogramRequest.from_config(dict(content[keys.ENCODER_CONFIG]))
