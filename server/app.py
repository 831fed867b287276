"""The Flower ServerApp: rounds of site training, aggregation, checkpoints, release.

The same ServerApp runs in deployment (``fedsynth server``) and in simulation
(``fedsynth simulate``): only the transport differs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context
from flwr.serverapp import Grid, ServerApp

from server.checkpoint import CheckpointStore
from server.distributed import DistributedTrainer
from server.effect import EFFECT_FILE, fit_effect
from server.encoder import ENCODER_FILE, fit_encoder
from server.identity import NamedGrid, bind_names
from server.optimisers import build_optimiser
from server.plan import check_plan, dp_sgd_plan
from server.progress import round_summary, site_status_lines
from server.release import release
from server.release_stages import fit_release_stages
from server.report import merge_site, site_entry
from server.secagg import secure_round
from server.strategy import SiteAveraging
from shared import keys
from shared.config import RunSettings
from shared.logs import setup_logging
from shared.models import GeneratorFamily, build_generator
from shared.models.base import ENCODER_KEY
from shared.models.release import ReleaseFamily
from shared.schema import Schema

log = logging.getLogger("fedsynth.server")
app = ServerApp()


def run_identity(settings: RunSettings, schema: Schema) -> dict[str, Any]:
    """What must not change between a checkpoint and a resumed run."""
    ident = settings.as_dict()
    for volatile in (
        "out_dir",
        "sites_dir",
        "site_nodes",  # a file in each start's own runtime folder
        "schema_path",
        "device",
        "round_timeout",
        "synthetic_rows",
        "min_sites",
    ):
        ident.pop(volatile, None)
    ident["schema_fingerprint"] = schema.fingerprint()
    return ident


def initial_model(schema: Schema, settings: RunSettings) -> GeneratorFamily:
    """Build the generator with a seeded, reproducible initialisation."""
    torch.manual_seed(settings.seed)
    return build_generator(schema, settings.model)


def run_federation(grid: Grid, settings: RunSettings) -> Path:
    """Run (or resume) every round, then release model, table and report.

    Returns
    -------
    Path
        The output folder.
    """
    schema = Schema.load(settings.schema_path)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bind_names(settings.site_nodes)  # deployment: replies name only registered sites
    if settings.site_nodes:
        grid = NamedGrid(grid)  # ... and each site is told the name it must run under
    family = initial_model(schema, settings)
    sites: dict[str, dict[str, Any]] = {}
    if isinstance(family, ReleaseFamily):
        # No DP-SGD rounds: one noisy release per stage, then the same release step.
        facts = fit_release_stages(grid, settings, family, sites, run_identity(settings, schema))
        return release(out, family, settings, sites, [], facts["release_noise_multiplier"], facts)
    store = CheckpointStore(out / "checkpoints", run_identity(settings, schema))
    state = family.state_dict()
    history: list[dict[str, Any]] = []
    start = 0
    optimiser = build_optimiser(settings.aggregation)
    ckpt = store.load_latest()
    if ckpt is not None:
        start, state, sites, history = ckpt.round, ckpt.state, ckpt.sites, ckpt.history
        optimiser.load_state_dict(ckpt.optimiser)
        log.info("resuming from the checkpoint of round %d", start)
        family.load_state_dict(state)  # refuses damaged weights or a damaged numeric encoder
    encoder_due = ckpt is None and settings.fits_encoder
    # Before the first charge: a run too few sites could finish stops here.
    plan = dp_sgd_plan(
        settings,
        family,
        start=start,
        encoder_due=encoder_due and not (out / ENCODER_FILE).exists(),
        effect_due=settings.calibrates_effect and not (out / EFFECT_FILE).exists(),
    )
    check_plan(grid, settings, plan)
    if encoder_due:
        # Before round 1: DP histograms from the sites -> public quantile maps in the model.
        fit_encoder(grid, settings, family, sites, store.identity)
        state = family.state_dict()
    trainer = None
    if settings.noise_placement == "distributed":
        trainer = DistributedTrainer(
            family,
            settings,
            schema.fingerprint(),
            moments_dir=out / "checkpoints",
            resume_round=start,
        )
    sigma = trainer.sigma if trainer is not None else settings.noise_multiplier()
    strategy = SiteAveraging(min_sites=settings.min_sites, expected_keys=set(state))
    log.info(
        "σ = %.4f for %d rounds × %d steps at q = %g (ε = %g per site this run)",
        sigma,
        settings.rounds,
        settings.local_steps,
        settings.sample_rate,
        settings.epsilon,
    )
    log.info(
        "aggregation %s (server η = %g)",
        settings.aggregation.aggregation,
        settings.aggregation.learning_rate,
    )
    for rnd in range(start + 1, settings.rounds + 1):
        t0 = time.perf_counter()
        train = settings.train_settings(
            rnd, noise_multiplier=sigma, schema_fingerprint=schema.fingerprint()
        )
        config = ConfigRecord(cast("dict[str, ConfigRecordValues]", train.to_config()))
        secure: dict[str, Any] = {}
        # Public reasons (client.errors.public_reason) of the sites that declined.
        declines: dict[str, str] = {}
        if trainer is not None:
            update, secure = trainer.run_round(grid, strategy, rnd, state)
            declines = secure.pop("declines")
        elif settings.secure_aggregation:
            update, info = secure_round(grid, strategy, rnd, state, config, settings)
            secure, declines = {"secure_aggregation": info.as_dict()}, info.declines
        else:
            messages = strategy.configure_train(rnd, ArrayRecord(state), config, grid)
            replies = grid.send_and_receive(messages, timeout=settings.round_timeout)
            agg, _ = strategy.aggregate_train(rnd, replies)
            if agg is None:  # pragma: no cover - aggregate_train raises instead
                continue
            update = agg.to_torch_state_dict()
            declines = {r.site: r.reason for r in strategy.last_replies if not r.trained}
        # The mean update is the pseudo-gradient of the server optimiser (fedavg: w + Δ̄);
        # the numeric encoder is fixed before round 1 (sites never train it): keep it exact.
        stepped = optimiser.apply(state, update)
        state = {k: state[k] if k == ENCODER_KEY else stepped[k] for k in state}
        for rep in strategy.last_replies:
            merge_site(
                sites,
                site_entry(rep.privacy, rep.site, rep.accountant, rep.secure_mode, rep.noise_seed),
            )
        history.append(
            {
                "round": rnd,
                "seconds": round(time.perf_counter() - t0, 3),
                "trained": sorted(r.site for r in strategy.last_replies if r.trained),
                "declined": sorted(declines),
                "decline_reasons": declines,
                **secure,
                # Sum of the sites' reported training seconds (public; see shared.keys).
                "local_seconds": round(
                    sum(r.privacy.get(keys.TRAIN_SECONDS, 0.0) for r in strategy.last_replies), 2
                ),
            }
        )
        store.save(rnd, state, sites, history, optimiser.state_dict())
        for line in site_status_lines(rnd, strategy.last_replies):
            log.info("%s", line)
        log.info(
            "%s",
            round_summary(
                rnd,
                settings.rounds,
                time.perf_counter() - t0,
                len(history[-1]["trained"]),
                len(strategy.last_replies),
                max((float(e["epsilon"]) for e in sites.values()), default=0.0),
            ),
        )
    family.load_state_dict(state)
    if settings.calibrates_effect:
        # After the last round: noisy AIPW sums from the sites -> the released offsets.
        fit_effect(grid, settings, family, state, sites, store.identity)
    return release(out, family, settings, sites, history, sigma)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point."""
    setup_logging()
    settings = RunSettings.from_run_config(context.run_config)
    out = run_federation(grid, settings)
    log.info("fedsynth: outputs written to %s", out)
