"""The site's side of one distributed DP-SGD step (noise placement ``distributed``).

For the θ the server sends, the site Poisson-samples its rows at rate q
(:class:`client.sampling.PoissonBatches`), sums the per-row gradients clipped to
C, and adds a discrete Gaussian share of variance σ²C²/K on the integers
(:func:`shared.distdp.step.site_share`). The share leaves the site only masked
by secure aggregation (:mod:`client.secagg`), so the server sees only the sum of
at least K shares, which carries the full noise σ²C².

Order of operations, each failing closed (as in :mod:`client.site`):

1. secure aggregation checks (the site knows its peers, and at least K of them shared
   keys; else nothing is computed);
2. the site's schema must match the server's; the table is loaded and validated;
3. under the ledger lock: refuse if one more step would exceed the budget (no
   charge, no share); compute the share; record ``(σC/Δ, q, 1)`` durably — the
   accounting against the server at t = 0 — *before* the share is masked and sent;
4. mask the share (:mod:`client.secagg`) and reply.

**No replay of shares.** Unlike a ``local`` update (full DP noise on its own,
so re-sending it is post-processing, see :mod:`client.replay`), a share carries
only 1/K of the noise. Re-sending the same share into a *new* secure sum in which
the other sites send fresh shares would let the server average the two sums and
cancel part of the others' noise: the re-sending site's row would then be
protected by variance ¾σ²C² (K = 2) instead of the σ²C² it was charged for. So a
step asked again (a restarted coordinator) is computed afresh and charged again:
the ledger over-counts in that case, and never under-counts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from client import secagg
from client.errors import BudgetExhaustedError, SiteConfigError, public_reason
from client.ledger import PrivacyLedger
from client.precheck import check_mechanism, site_schema
from client.randomness import RoundRandomness, site_seed
from client.result import RoundResult
from client.sampling import PoissonBatches
from client.settings import SiteSettings
from shared import keys
from shared.config import DistributedStepSettings, TrainSettings
from shared.device import select_device
from shared.distdp.accounting import accounting_multiplier
from shared.distdp.encoding import IntVector, ModularCodec
from shared.distdp.step import clipped_gradient_sum, parameter_count, site_share
from shared.errors import FedsynthError
from shared.models import GeneratorFamily, build_generator
from shared.secagg import site_mask
from shared.streaming import encode_table

log = logging.getLogger("fedsynth.client")
StateDict = dict[str, torch.Tensor]
ReplyBuilder = Callable[[SiteSettings | None, TrainSettings | None, RoundResult], RecordDict]


def step_seed(site: SiteSettings, step: int) -> int:
    """Seed of this step's sampling, rounding and noise at this site.

    Secret OS randomness at a real site (:func:`client.randomness.secret_seed`: the
    server must never be able to regenerate a site's noise share); derived from the
    run seed, site name and step in a simulation, so research runs reproduce.
    """
    return site_seed(site.simulation_seed, site.site_name, "distdp", step)


def _step_mechanism(
    site: SiteSettings, step: DistributedStepSettings
) -> tuple[GeneratorFamily, float]:
    """The step's generator (untrained) and σ_acc = σC/Δ, the multiplier the ledger records.

    The site computes its own accounting from the public parameters and the model's size.
    """
    train = step.train
    family = build_generator(site_schema(site, train.schema_fingerprint), train.model)
    multiplier = accounting_multiplier(
        sigma=train.noise_multiplier,
        clip_norm=train.max_grad_norm,
        grid=step.grid,
        dim=parameter_count(family.private_module()),
        sites=step.noise_sites,
    )
    return family, multiplier


def check_step_budget(site: SiteSettings, step: DistributedStepSettings) -> None:
    """Refuse a step this site could not afford (the key set-up's check, :mod:`client.precheck`).

    Raises
    ------
    BudgetExhaustedError
        One more step at σ_acc would take the site past its total ε.
    SiteConfigError, SchemaError, LedgerError
        The site could not take part (no charge either way).
    """
    _, multiplier = _step_mechanism(site, step)
    train = step.train
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=train.accountant)
    check_mechanism(
        ledger, site, noise_multiplier=multiplier, sample_rate=train.sample_rate, steps=1
    )


def run_site_step(
    site: SiteSettings, step: DistributedStepSettings, global_state: StateDict, *, run: str
) -> tuple[RoundResult, IntVector | None, float]:
    """One step at one site: the public result, the (unmasked) ring share, σ_acc.

    The share is ``None`` when the site declines (budget): nothing was charged.
    σ_acc = σC/Δ is the noise multiplier the ledger records for the step.

    Raises
    ------
    SiteConfigError, SchemaError, DataValidationError, LedgerError, AccountingError
        Before any budget is charged; the caller declines the step.
    """
    train = step.train
    family, multiplier = _step_mechanism(site, step)
    family.load_state_dict(global_state)
    device = select_device(site.device)
    module = family.private_module().to(device).train()
    codec = ModularCodec(grid=step.grid, modulus_bits=step.modulus_bits)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=train.accountant)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="encoded-", dir=site.state_dir) as tmp:
        data = encode_table(site.data_path, family.schema, Path(tmp) / "rows.f32")
        with ledger.locked() as led:
            try:
                check_mechanism(
                    led, site, noise_multiplier=multiplier, sample_rate=train.sample_rate, steps=1
                )
            except BudgetExhaustedError as exc:
                log.warning("%s", exc)
                spent = led.epsilon(delta=site.budget_delta)
                return RoundResult(False, str(exc), spent, 0, led.total_steps), None, multiplier
            rand = RoundRandomness.from_seed(step_seed(site, step.step), device)
            torch.manual_seed(rand.model_seed)  # the VAE's reparametrisation draws
            sampler = PoissonBatches(data, sample_rate=train.sample_rate, generator=rand.sampling)
            grad_sum = clipped_gradient_sum(
                module,
                family.criterion(),
                sampler.next_batch().to(device),
                clip_norm=train.max_grad_norm,
            )
            share = site_share(
                grad_sum,
                sigma=train.noise_multiplier,
                clip_norm=train.max_grad_norm,
                noise_sites=step.noise_sites,
                codec=codec,
                rng=rand.shares,
            )
            led.record(
                run=run,
                server_round=train.server_round,
                noise_multiplier=multiplier,
                sample_rate=train.sample_rate,
                steps=1,
                max_grad_norm=train.max_grad_norm,
            )
            spent, total = led.epsilon(delta=site.budget_delta), led.total_steps
        n_rows = len(data)
    seconds = time.perf_counter() - t0
    log.info(
        "site %s step %d: share computed on %s in %.2fs, cumulative ε=%.4f",
        site.site_name,
        step.step,
        device,
        seconds,
        spent,
    )
    result = RoundResult(True, "", spent, 1, total, num_rows=n_rows, seconds=seconds)
    return result, share, multiplier


def handle_step(msg: Message, context: Context, build_reply: ReplyBuilder) -> Message:
    """The ``train.distdp_step`` message: checks, the site's step, the masked share.

    ``build_reply`` assembles the public accounting reply (the ClientApp's
    :func:`client.app.build_reply_content`); the masked share is added to it.
    """
    from client.app import declined

    try:
        k = DistributedStepSettings.from_config(dict(msg.content[keys.TRAIN_CONFIG])).noise_sites
        state, me, peers = secagg.participation(msg, context, noise_sites=k)
    except (FedsynthError, KeyError, ValueError, TypeError) as exc:
        return secagg.refuse(msg, exc)
    site: SiteSettings | None = None
    step: DistributedStepSettings | None = None
    share: IntVector | None = None
    multiplier = 0.0
    try:
        site = SiteSettings.from_context(context.node_config, context.run_config)
        step = DistributedStepSettings.from_config(dict(msg.content[keys.TRAIN_CONFIG]))
        arrays = msg.content[keys.GLOBAL_ARRAYS]
        if not isinstance(arrays, ArrayRecord):
            raise SiteConfigError("the server's message holds no global weights")
        result, share, multiplier = run_site_step(
            site, step, arrays.to_torch_state_dict(), run=str(context.run_id)
        )
    except FedsynthError as exc:
        log.error("distributed step declined: %s", exc)
        result = declined(site, public_reason(exc))
    except Exception as exc:  # a bug must not leak values in a traceback
        log.exception("distributed step failed")
        result = declined(site, public_reason(exc))
    # Report the multiplier the ledger records per step (σC/Δ), not the total σ.
    reported = replace(step.train, noise_multiplier=multiplier) if step is not None else None
    # A step's noise share is drawn with numpy's generator (secretly seeded), never
    # Opacus's CSPRNG: the site's --secure-mode does not cover it.
    content = build_reply(replace(site, secure_mode=False) if site else None, reported, result)
    if share is None or step is None:
        return Message(content, reply_to=msg)
    try:
        ring = ModularCodec(grid=step.grid, modulus_bits=step.modulus_bits).ring
        context_bytes = cast(bytes, state[keys.SA_CONTEXT])
        masked = site_mask(me, share, peers, codec=ring, context=context_bytes)
    except Exception as exc:
        return secagg.refuse(msg, exc)
    content[keys.MASKED_UPDATE] = ArrayRecord({keys.MASKED_VECTOR: Array(ring.to_wire(masked))})
    return Message(content, reply_to=msg)
