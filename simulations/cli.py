"""``fedsynth simulate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli_options import (
    add_aggregation_options,
    add_run_options,
    add_secagg_options,
    aggregation_overrides,
    run_overrides,
    secagg_overrides,
)
from simulations.partition import DEFAULT_HOLDOUT
from simulations.simulate import SimulationPlan, run_simulation


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth simulate``."""
    p = sub.add_parser(
        "simulate",
        help="run N sites on this machine (Flower simulation engine)",
        description="With no arguments: the built-in cohort, 3 sites, ε = 3 per site.",
    )
    p.add_argument(
        "--data", type=Path, help="CSV/Parquet table to split (default: built-in cohort)"
    )
    p.add_argument("--schema", type=Path, help="public schema JSON (required with --data)")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument(
        "--partition", default="iid", help="iid | unequal | dirichlet:ALPHA | column:NAME"
    )
    p.add_argument(
        "--site-budget",
        type=float,
        default=0.0,
        help="each site's total ε over all runs (default: --epsilon)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        help="share of rows held out for evaluation",
    )
    p.add_argument("--synthetic-rows", type=int, help="rows to sample (default: training rows)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", type=Path, default=Path("runs/simulate"))
    p.add_argument(
        "--no-evaluate", action="store_true", help="skip the evaluation report on the holdout"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard checkpoints in --out (site ledgers are kept)",
    )
    p.add_argument(
        "--keep-runtime", action="store_true", help="keep Flower/Ray temp files (debugging)"
    )
    p.add_argument(
        "--ray-address",
        help="run the sites on an existing Ray cluster (HOST:PORT of its head, see README)",
    )
    add_run_options(p)
    add_aggregation_options(p)
    add_secagg_options(p, default=False)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    settings = {
        **run_overrides(args),
        **aggregation_overrides(args),
        **secagg_overrides(args),
        "device": args.device,
    }
    if args.synthetic_rows is not None:
        settings["synthetic-rows"] = args.synthetic_rows
    plan = SimulationPlan(
        out=args.out,
        sites=args.sites,
        partition=args.partition,
        holdout=args.holdout,
        data=args.data,
        schema=args.schema,
        settings=settings,
        site_budget_epsilon=args.site_budget,
        restart=args.restart,
        keep_runtime=args.keep_runtime,
        evaluate=not args.no_evaluate,
        ray_address=args.ray_address,
    )
    out = run_simulation(plan)
    if not args.no_evaluate:
        print(f"\nfedsynth: evaluation report {out / 'evaluation' / 'report.html'}")
    print(
        f"fedsynth: synthetic table {out / 'synthetic.csv'}, privacy report "
        f"{out / 'privacy_report.md'}, model {out / 'model'}"
    )
    return 0
