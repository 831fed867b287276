"""``fedsynth evaluate``: compare a synthetic table with real holdout rows."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from shared.cli_options import seed_arg
from shared.evaluation.api import evaluate, write_report
from shared.evaluation.inputs import TableLike
from shared.schema import Schema
from shared.tables import load_table


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="fidelity, utility, privacy and causal checks of a synthetic table",
        description=(
            "Compare a synthetic table with real holdout rows and write report.json and a "
            "self-contained report.html. Roles (target, treatment, outcome) default to the "
            "schema's 'roles'."
        ),
    )
    p.add_argument(
        "--real", type=Path, required=True, help="real holdout table never used in training"
    )
    p.add_argument("--synthetic", type=Path, required=True, help="synthetic table (CSV/Parquet)")
    p.add_argument("--schema", type=Path, required=True, help="public schema JSON")
    p.add_argument(
        "--train",
        type=Path,
        nargs="+",
        help="the real training rows, one table or several (e.g. every site's table of a "
        "simulation): enables the privacy checks and is the TRTR training set "
        "(default: a 70%% split of --real)",
    )
    p.add_argument("--target", help="column to predict for TSTR/TRTR")
    p.add_argument("--treatment", help="binary categorical treatment column (treated = second)")
    p.add_argument("--outcome", help="numeric or binary outcome column")
    p.add_argument(
        "--privacy-report", type=Path, help="privacy_report.json of the run (per-site ε, δ)"
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of samples, models and bootstrap")
    p.add_argument("--out", type=Path, required=True, help="folder for report.json/report.html")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    train: TableLike | None = args.train[0] if args.train and len(args.train) == 1 else None
    if args.train and len(args.train) > 1:
        schema = Schema.load(args.schema)
        # Several tables (each validated against the schema, naming its file) make one.
        frames = [load_table(path, schema) for path in args.train]
        train = pd.concat(frames, ignore_index=True)
    result = evaluate(
        args.real,
        args.synthetic,
        args.schema,
        train=train,
        target=args.target,
        treatment=args.treatment,
        outcome=args.outcome,
        privacy_report=args.privacy_report,
        seed=args.seed,
    )
    json_path, html_path = write_report(result, args.out)
    summary = result["summary"]
    print(f"fedsynth evaluate: {summary['headline']}")
    for verdict in summary["verdicts"]:
        print(f"  {verdict['verdict']:>7}  {verdict['aspect']}")
    print(f"  {summary['privacy_note']}")
    print(f"\nfedsynth: report {html_path} (machine-readable: {json_path})")
    return 0
