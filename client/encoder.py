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
from client.oneshot import ReleaseResult, answer_release, charge_and_release, release_reply
from client.settings import SiteSettings
from shared import keys
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
    site: SiteSettings, request: HistogramRequest, counts: np.ndarray, *, run: str
) -> ReleaseResult:
    """Step 3: budget check, Gaussian noise, durable ledger record (in that order)."""
    result = charge_and_release(
        site,
        noise_multiplier=request.noise_multiplier,
        sensitivity=histogram_sensitivity(counts.shape[0]),
        accountant=request.accountant,
        ledger_round=ENCODER_ROUND,
        run=run,
        noisy=lambda rng: add_histogram_noise(
            counts, noise_multiplier=request.noise_multiplier, rng=rng
        ),
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
    site: SiteSettings | None, request: HistogramRequest | None, result: ReleaseResult
) -> RecordDict:
    """The reply: only the fields in :data:`shared.keys.ENCODER_REPLY_FIELDS`."""
    d = 0 if result.noisy is None else result.noisy.shape[0]
    return release_reply(
        site,
        result,
        noise_multiplier=request.noise_multiplier if request else 0.0,
        sensitivity=histogram_sensitivity(d) if d else 0.0,
        accountant=request.accountant if request else "",
        schema_fingerprint=request.schema_fingerprint if request else "",
        record=(keys.HISTOGRAM_ARRAYS, keys.HISTOGRAM_COUNTS),
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
        parse=lambda content: HistogramRequest.from_config(dict(content[keys.ENCODER_CONFIG])),
        run_stage=lambda site, request, _content, run: release_histograms(
            site, request, raw_histograms(site, request), run=run
        ),
        reply=reply_content,
    )
