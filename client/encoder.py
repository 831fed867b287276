"""The site's part of the DP encoder stage: one noisy histogram release, charged first.

Order of operations, each step failing closed (as for a training round):

1. load the site's schema and check its fingerprint equals the server's;
2. load and validate the table (a bad table stops here: nothing charged or sent);
3. under the ledger lock: check that one Gaussian release at σ_h (recorded as
   ``(σ_h, q = 1, 1 step)``, with the sensitivity √d in place of the clip norm)
   fits the remaining budget, add the noise, record the release durably;
4. only then reply with the noisy counts.

The raw counts never leave this module; only ``counts + N(0, (σ_h √d)²)`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.errors import BudgetExhaustedError, SiteConfigError
from client.ledger import PrivacyLedger
from client.settings import SiteSettings
from shared import keys
from shared.dp_quantile import (
    HistogramRequest,
    add_histogram_noise,
    column_histogram,
    histogram_sensitivity,
)
from shared.errors import FedsynthError
from shared.schema import Schema
from shared.tables import load_table

log = logging.getLogger("fedsynth.client")
ENCODER_ROUND = 0  # ledger round number of the encoder release (training rounds start at 1)


@dataclass(frozen=True)
class HistogramResult:
    """Outcome of the encoder stage at one site (``noisy`` is set only when sent)."""

    sent: bool
    reason: str
    epsilon: float
    total_steps: int
    noisy: np.ndarray | None = None


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
) -> HistogramResult:
    """Step 3: budget check, Gaussian noise, durable ledger record (in that order)."""
    from client.site import noise_seed

    sensitivity = histogram_sensitivity(counts.shape[0])
    ledger = PrivacyLedger.open(
        site.ledger_path, site=site.site_name, accountant=request.accountant
    )
    with ledger.locked() as led:
        try:
            led.check_budget(
                noise_multiplier=request.noise_multiplier,
                sample_rate=1.0,
                steps=1,
                budget_epsilon=site.budget_epsilon,
                delta=site.budget_delta,
            )
        except BudgetExhaustedError as exc:
            log.warning("%s", exc)
            return HistogramResult(
                False, str(exc), led.epsilon(delta=site.budget_delta), led.total_steps
            )
        # Seeded like DP-SGD's noise without secure_mode: secret OS randomness at a real
        # site. secure_mode (a CSPRNG, Opacus's torchcsprng) is not applied to this release.
        rng = np.random.default_rng(noise_seed(site, ENCODER_ROUND))
        noisy = add_histogram_noise(counts, noise_multiplier=request.noise_multiplier, rng=rng)
        led.record(
            run=run,
            server_round=ENCODER_ROUND,
            noise_multiplier=request.noise_multiplier,
            sample_rate=1.0,
            steps=1,
            max_grad_norm=sensitivity,
        )
        epsilon, total = led.epsilon(delta=site.budget_delta), led.total_steps
    log.info(
        "site %s: released noisy histograms of %d numeric column(s) (σ_h=%.4g), cumulative ε=%.4f",
        site.site_name,
        counts.shape[0],
        request.noise_multiplier,
        epsilon,
    )
    return HistogramResult(True, "", epsilon, total, noisy)


def reply_content(
    site: SiteSettings | None, request: HistogramRequest | None, result: HistogramResult
) -> RecordDict:
    """The reply: only the fields in :data:`shared.keys.ENCODER_REPLY_FIELDS`."""
    d = 0 if result.noisy is None else result.noisy.shape[0]
    metrics = MetricRecord(
        {
            keys.EPSILON: float(result.epsilon),
            keys.DELTA: float(site.budget_delta if site else 0.0),
            keys.NOISE_MULTIPLIER: float(request.noise_multiplier if request else 0.0),
            keys.SAMPLE_RATE: 1.0,
            keys.MAX_GRAD_NORM: float(histogram_sensitivity(d) if d else 0.0),
            keys.STEPS: 1 if result.sent else 0,
            keys.TOTAL_STEPS: int(result.total_steps),
            keys.UPDATE_NORM_CLIPPED: 0.0,
        }
    )
    info = ConfigRecord(
        {
            keys.SITE_NAME: site.site_name if site else "unknown",
            keys.STATUS: keys.STATUS_TRAINED if result.sent else keys.STATUS_DECLINED,
            keys.REASON: result.reason,
            keys.ACCOUNTANT: request.accountant if request else "",
            keys.SECURE_MODE: bool(site.secure_mode) if site else False,
            keys.NOISE_SEED: "secret"
            if site is None or site.simulation_seed is None
            else "simulation",
            keys.SCHEMA_FINGERPRINT: request.schema_fingerprint if request else "",
        }
    )
    content = RecordDict({keys.PRIVACY_METRICS: metrics, keys.SITE_INFO: info})
    if result.sent and result.noisy is not None:
        content[keys.HISTOGRAM_ARRAYS] = ArrayRecord({keys.HISTOGRAM_COUNTS: Array(result.noisy)})
    return content


def handle_histogram(
    msg: Message, context: Context, public_reason: Callable[[BaseException], str]
) -> Message:
    """Answer the encoder stage (errors become a decline with a safe reason)."""
    site: SiteSettings | None = None
    request: HistogramRequest | None = None
    try:
        site = SiteSettings.from_context(context.node_config, context.run_config)
        request = HistogramRequest.from_config(dict(msg.content[keys.ENCODER_CONFIG]))
        counts = raw_histograms(site, request)
        result = release_histograms(site, request, counts, run=str(context.run_id))
    except FedsynthError as exc:
        log.error("encoder histograms declined: %s", exc)
        result = HistogramResult(False, public_reason(exc), 0.0, 0)
    except Exception as exc:  # a bug must not leak values in a traceback
        log.exception("encoder histograms failed")
        result = HistogramResult(False, public_reason(exc), 0.0, 0)
    return Message(content=reply_content(site, request, result), reply_to=msg)
