"""``fedsynth simulate``: every site on this machine, on Flower's simulation engine.

The table (the built-in cohort by default) is split into a holdout that no
site trains on and N site tables. Each site gets its own folder
(``OUT/sites/site-i/`` with ``data.csv`` and its privacy ledger in ``state/``),
then a private simulation SuperLink runs the *same* ServerApp and ClientApp
that a deployment runs. Outputs land in ``OUT``:

``model/``, ``synthetic.csv``, ``privacy_report.json``, ``privacy_report.md``,
``holdout.csv``, ``schema.json``, ``logs/``.

Rerunning with the same ``--out`` and settings resumes from the last
checkpoint; the sites' ledgers persist, so their spend is never forgotten.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from server.effect import EFFECT_FILE
from server.encoder import ENCODER_FILE
from server.flower import add_connection, build_app, submit_and_wait, wait_healthy
from server.release_stages import RELEASE_FILE
from shared.cohort import cohort_schema, generate_cohort
from shared.config import RunSettings, app_config_defaults
from shared.config_model import ModelSettings
from shared.distdp.plan import DistributedPlan
from shared.errors import ConfigError
from shared.models import build_generator
from shared.runtime import FlowerRuntime, flower_bin, free_port
from shared.schema import Schema
from shared.tables import load_table, validate_frame
from simulations.partition import PartitionSpec, partition, split_holdout

log = logging.getLogger("fedsynth.simulate")


@dataclass(frozen=True)
class SimulationPlan:
    """Everything ``fedsynth simulate`` needs, validated."""

    out: Path
    sites: int
    partition: str
    holdout: float
    data: Path | None
    schema: Path | None
    settings: dict[str, Any]
    site_budget_epsilon: float = 0.0
    restart: bool = False
    keep_runtime: bool = False
    echo: bool = True
    evaluate: bool = True
    ray_address: str | None = None


#: Stage results a run keeps beside its checkpoints, so a resumed run does not ask again.
SAVED_STAGES = (RELEASE_FILE, ENCODER_FILE, EFFECT_FILE)


def check_options(plan: SimulationPlan) -> None:
    """Refuse options that cannot work, naming the option, before anything is written.

    Raises
    ------
    ConfigError
        A holdout share outside (0, 1), ``--schema`` without ``--data``, fewer than one
        synthetic row, too few sites, or a device this machine does not have.
    """
    if not 0.0 < plan.holdout < 1.0:
        raise ConfigError(
            f"--holdout {plan.holdout:g} must be a share strictly between 0 and 1 (e.g. 0.2): "
            "the holdout is what the release is evaluated on, and the rest is what sites train on"
        )
    if plan.schema is not None and plan.data is None:
        raise ConfigError(
            f"--schema {plan.schema} was given without --data: it describes your table, and the "
            "built-in cohort has its own schema. Pass --data TABLE too, or drop --schema"
        )
    rows = plan.settings.get("synthetic-rows")
    if rows is not None and int(rows) < 1:
        raise ConfigError(
            f"--synthetic-rows {rows} must be at least 1 (leave it out: training rows)"
        )
    if plan.sites < 1:
        raise ConfigError(f"--sites {plan.sites} must be at least 1")
    if plan.sites < 2 and plan.settings.get("secure-aggregation"):
        raise ConfigError(
            "--secure-aggregation needs at least 2 sites (a sum of one site is that site's "
            "update); use --sites 2 or more, or drop --secure-aggregation"
        )
    from shared.device import check_device_name, select_device

    device = str(plan.settings.get("device", "auto"))
    # On a Ray cluster the workers, not this head node, must have the GPU.
    if plan.ray_address:
        check_device_name(device)
    else:
        select_device(device)


def load_source(plan: SimulationPlan) -> tuple[pd.DataFrame, Schema]:
    """The table to split and its public schema (never inferred from the rows)."""
    if plan.data is None:
        schema = cohort_schema()
        raw = generate_cohort(seed=int(plan.settings.get("seed", 0)) + 7)
        frame = validate_frame(
            raw.astype(object).where(raw.notna(), None), schema, source="built-in cohort"
        )
        return frame, schema
    if plan.schema is None:
        raise ConfigError(
            f"--data {plan.data} needs --schema: the schema is public and agreed in advance, never "
            "inferred silently. Draft one with `fedsynth schema draft` and review it."
        )
    schema = Schema.load(plan.schema)
    return load_table(plan.data, schema), schema


def prepare_sites(
    plan: SimulationPlan, frame: pd.DataFrame, schema: Schema
) -> tuple[Path, list[int]]:
    """Write holdout, schema and per-site tables; keep existing ledgers. Returns sites dir and sizes."""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    seed = int(plan.settings.get("seed", 0))
    holdout, train = split_holdout(frame, plan.holdout, seed=seed)
    schema.save(out / "schema.json")
    holdout.to_csv(out / "holdout.csv", index=False)
    parts = partition(
        train,
        schema,
        PartitionSpec.parse(plan.partition),
        plan.sites,
        seed=seed,
    )
    sites_dir = out / "sites"
    for i, part in enumerate(parts):
        site = sites_dir / f"site-{i}"
        (site / "state").mkdir(parents=True, exist_ok=True)
        part.to_csv(site / "data.csv", index=False)
    return sites_dir, [len(p) for p in parts]


def run_simulation(plan: SimulationPlan) -> Path:
    """Prepare the sites and run the federation on Flower's simulation engine."""
    t0 = time.perf_counter()
    check_options(plan)
    early = {**plan.settings, "schema-path": "-", "out-dir": "-", "min-sites": plan.sites}
    early["announced-rows"] = early.get("announced-rows") or 1  # set from the tables below
    # Refuse what the run cannot honour (an ε out of reach, a release family's stages)
    # before any file is written or process started.
    RunSettings.from_run_config(early).mechanisms()
    if plan.settings.get("noise-placement") == "distributed":
        # Refuse before any file is written or process started.
        DistributedPlan.refuse_without_secure_aggregation(
            bool(plan.settings.get("secure-aggregation"))
        )
    frame, schema = load_source(plan)
    # A generator that cannot model this schema is refused before any file is written.
    build_generator(schema, ModelSettings.from_config(plan.settings))
    sites_dir, sizes = prepare_sites(plan, frame, schema)
    log.info(
        "%d sites with %s rows; holdout %d rows (never trained on)",
        len(sizes),
        sizes,
        round(plan.holdout * len(frame)),
    )
    if plan.restart:
        shutil.rmtree(plan.out / "checkpoints", ignore_errors=True)
        for saved in SAVED_STAGES:  # what a release or a DP stage kept for a resumed run
            (plan.out / saved).unlink(missing_ok=True)
    overrides = {
        **plan.settings,
        "schema-path": str((plan.out / "schema.json").resolve()),
        "out-dir": str(plan.out.resolve()),
        "sites-dir": str(sites_dir.resolve()),
        "min-sites": len(sizes),
        "site-budget-epsilon": plan.site_budget_epsilon,
    }
    overrides.setdefault("synthetic-rows", int(sum(sizes)))
    if not overrides.get("announced-rows"):
        # The simulation's operator knows every site's rows; a consortium announces this.
        overrides["announced-rows"] = int(sum(sizes))
    RunSettings.from_run_config(overrides)  # fail fast, before starting any process
    with FlowerRuntime.create(keep=plan.keep_runtime) as rt:
        app_dir = build_app(rt.root / "app", app_config_defaults())
        port = free_port()
        link_log = plan.out / "logs" / "superlink.log"
        proc = rt.spawn(
            [
                flower_bin("flower-superlink"),
                "--simulation",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                ":flwr-in-memory:",
            ],
            link_log,
            # Flower's Ray backend calls ray.init() without an address, and Ray then
            # joins the cluster named by RAY_ADDRESS instead of starting its own.
            extra_env={"RAY_ADDRESS": plan.ray_address} if plan.ray_address else None,
        )
        wait_healthy(proc, port, link_log)
        add_connection(rt, "local-sim", f"127.0.0.1:{port}")
        federation = {"num-supernodes": len(sizes), "client-resources-num-cpus": 1}
        if plan.ray_address:
            log.info("simulation workers run on the Ray cluster at %s", plan.ray_address)
        submit_and_wait(
            rt,
            app_dir,
            "local-sim",
            overrides,
            plan.out / "logs" / "run.log",
            echo=plan.echo,
            federation_config=federation,
        )
    if plan.evaluate:
        evaluate_release(plan.out, sites_dir)
    log.info("simulation finished in %.1fs; outputs in %s", time.perf_counter() - t0, plan.out)
    return plan.out


def evaluate_release(out: Path, sites_dir: Path) -> None:
    """Evaluate the synthetic table against the holdout that no site trained on.

    The simulation owns all the rows, so the sites' tables together serve as the
    training set of the privacy checks (exact matches, DCR, membership inference).
    """
    from shared.evaluation.api import evaluate, write_report

    train = pd.concat(
        [
            pd.read_csv(p, dtype=str, keep_default_na=False)
            for p in sorted(sites_dir.glob("site-*/data.csv"))
        ],
        ignore_index=True,
    )
    schema = Schema.load(out / "schema.json")
    result = evaluate(
        out / "holdout.csv",
        out / "synthetic.csv",
        schema,
        train=validate_frame(train, schema, source=str(sites_dir)),
        privacy_report=out / "privacy_report.json",
    )
    json_path, html_path = write_report(result, out / "evaluation")
    log.info("evaluation report: %s (%s)", html_path, json_path)
