"""One training round at one site, independent of Flower (so it is testable alone).

Order of operations, each step failing closed:

1. load the site's schema and check its fingerprint equals the server's;
2. load and validate the table (a bad table stops here: nothing charged or sent);
3. under the ledger lock: check that the planned steps fit the remaining budget,
   run DP-SGD, record the steps durably;
4. compute the update (new − global) and clip its L2 norm, and remember it.

A request identical to the last one answered (same round config, same global
weights: a restarted coordinator asking again) gets the stored update back
without a new charge (see :mod:`client.replay`). Not under secure aggregation: the
stored update would go into a second sum over another set of sites, and the
difference of the two sums would show it alone; there the round is trained and
charged again.

The caller sends the reply only after step 3 has written the ledger.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from client.errors import BudgetExhaustedError
from client.ledger import PrivacyLedger
from client.precheck import check_affordable, site_schema
from client.randomness import site_seed
from client.replay import ReplayStore, SentUpdate, request_digest
from client.result import RoundResult
from client.settings import SiteSettings
from client.training import train_dp
from shared.config import ModelSettings, TrainSettings
from shared.device import select_device
from shared.models import GeneratorFamily, build_generator
from shared.run_plan import train_config_digest
from shared.streaming import encode_table

log = logging.getLogger("fedsynth.client")
StateDict = dict[str, torch.Tensor]
PROGRESS_EVERY = 25  # DP steps between progress lines in the site log


def update_norm(update: StateDict) -> float:
    """Global L2 norm of a model update (all parameters together)."""
    return float(torch.sqrt(torch.stack([(v.double() ** 2).sum() for v in update.values()]).sum()))


def clip_update(update: StateDict, max_norm: float) -> tuple[StateDict, bool]:
    """Scale ``update`` so its global L2 norm is at most ``max_norm``.

    Returns
    -------
    (dict, bool)
        The (possibly scaled) update and whether scaling happened.
    """
    norm = update_norm(update)
    if norm <= max_norm:
        return update, False
    # The margin absorbs float32 rounding, so the result never exceeds the bound.
    scale = max_norm / norm * (1.0 - 1e-6)
    return {k: v * scale for k, v in update.items()}, True


def noise_seed(site: SiteSettings, server_round: int) -> int:
    """Seed of this round's Poisson sampling, Gaussian noise and model randomness here.

    At a real site it is drawn from the operating system's secret randomness
    (:func:`client.randomness.secret_seed`, 128 bits): a seed the coordinator could know
    or search (e.g. one it sends) would let it regenerate the noise and subtract it. In
    a simulation it is derived from the run seed, the site name and the round, so
    research runs reproduce and no two sites share noise.
    """
    return site_seed(site.simulation_seed, site.site_name, server_round)


def run_site_round(
    site: SiteSettings,
    train: TrainSettings,
    global_state: StateDict,
    *,
    run: str,
    resend: bool = True,
) -> RoundResult:
    """Run one round of local DP training; see the module docstring for the order.

    Parameters
    ----------
    resend : bool
        Whether a request already answered gets the stored update back at no charge
        (False under secure aggregation, see the module docstring).

    Raises
    ------
    SiteConfigError, SchemaError, DataValidationError, LedgerError, TrainingError
        Before any budget is charged; the caller declines the round.
    """
    with model_and_rows(
        site, fingerprint=train.schema_fingerprint, model=train.model, state=global_state
    ) as (family, data):
        return _train_round(site, train, family, global_state, data, run=run, resend=resend)


@contextlib.contextmanager
def model_and_rows(
    site: SiteSettings, *, fingerprint: str, model: ModelSettings, state: StateDict
) -> Iterator[tuple[GeneratorFamily, np.ndarray]]:
    """The server's model rebuilt at the site, and the site's rows in its encoding.

    Raises
    ------
    SiteConfigError, SchemaError, DataValidationError, ModelError
        A foreign schema, a bad table or damaged weights: before anything is charged.
    """
    schema = site_schema(site, fingerprint)
    family = build_generator(schema, model)
    family.load_state_dict(state)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    # The encoded rows are the site's data: they live in its private state folder,
    # only while the caller needs them.
    with tempfile.TemporaryDirectory(prefix="encoded-", dir=site.state_dir) as tmp:
        yield family, encode_table(site.data_path, schema, Path(tmp) / "rows.f32")


def _train_round(
    site: SiteSettings,
    train: TrainSettings,
    family: GeneratorFamily,
    global_state: StateDict,
    data: np.ndarray,
    *,
    run: str,
    resend: bool,
) -> RoundResult:
    """Steps 3 and 4 of :func:`run_site_round` on the encoded rows."""
    if site.budget_delta >= 1.0 / len(data):
        log.warning(
            "site %s: δ=%g is not well below 1/n=%g; the guarantee is weak. Lower budget-delta.",
            site.site_name,
            site.budget_delta,
            1.0 / len(data),
        )
    device = select_device(site.device)
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name, accountant=train.accountant)
    replay = ReplayStore(site.state_dir) if resend else None
    digest = request_digest(train, global_state)
    with ledger.locked() as led:
        sent = replay.find(digest) if replay is not None else None
        if sent is not None:
            log.warning(
                "site %s round %d: the coordinator asked again for a round this site already "
                "answered (it restarted); re-sending the same update, no new charge",
                site.site_name,
                train.server_round,
            )
            return RoundResult(
                True,
                "",
                led.epsilon(delta=site.budget_delta),
                sent.steps,
                led.total_steps,
                sent.update,
                sent.clipped,
                len(data),
            )
        try:
            check_affordable(led, site, train)
        except BudgetExhaustedError as exc:
            log.warning("%s", exc)
            return RoundResult(
                False, str(exc), led.epsilon(delta=site.budget_delta), 0, led.total_steps
            )
        stats = train_dp(
            family,
            data,
            steps=train.local_steps,
            noise_multiplier=train.noise_multiplier,
            max_grad_norm=train.max_grad_norm,
            sample_rate=train.sample_rate,
            learning_rate=train.learning_rate,
            device=device,
            seed=noise_seed(site, train.server_round),
            secure_mode=site.secure_mode,
            progress=lambda step, steps, _loss: log.info(
                "site %s round %d: DP step %d/%d", site.site_name, train.server_round, step, steps
            ),
            progress_every=PROGRESS_EVERY,
            proximal_mu=train.proximal_mu,
            expected_batch=train.expected_batch,
        )
        led.record(
            run=run,
            server_round=train.server_round,
            noise_multiplier=train.noise_multiplier,
            sample_rate=train.sample_rate,
            steps=stats.steps,
            max_grad_norm=train.max_grad_norm,
        )
        epsilon, total = led.epsilon(delta=site.budget_delta), led.total_steps
    new_state = family.state_dict()
    update = {k: (new_state[k].cpu() - global_state[k].cpu()) for k in global_state}
    update, clipped = clip_update(update, train.update_clip_norm)
    if replay is not None:
        replay.save(SentUpdate(digest, update, clipped, stats.steps, train_config_digest(train)))
    log.info(
        "site %s round %d: %d DP steps on %s in %.1fs, cumulative ε=%.4f",
        site.site_name,
        train.server_round,
        stats.steps,
        device,
        stats.seconds,
        epsilon,
    )
    return RoundResult(
        True, "", epsilon, stats.steps, total, update, clipped, len(data), stats.seconds
    )
