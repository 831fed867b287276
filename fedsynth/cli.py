"""The ``fedsynth`` command: one entry point, one subcommand per role.

This package is only the composition root: each subcommand's work lives in the
package of the role that runs it (``client``, ``server``, ``simulations``,
``deploy``, ``shared``). Errors fedsynth raises on purpose are printed as one
clear message (exit code 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

from shared.errors import FedsynthError
from shared.logs import setup_logging

Handler = Callable[[argparse.Namespace], int]


def _add_schema(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shared import cli_schema

    p = sub.add_parser("schema", help="draft or check the public table schema")
    ss = p.add_subparsers(dest="schema_cmd", required=True)
    d = ss.add_parser("draft", help="draft a schema from a local table (review it before use!)")
    d.add_argument("table", help="CSV or Parquet file")
    d.add_argument("-o", "--out", default="schema.draft.json", help="where to write the draft")
    d.add_argument("--name", default="table", help="schema name")
    d.set_defaults(handler=cli_schema.draft)
    c = ss.add_parser("check", help="validate a table against a schema")
    c.add_argument("table")
    c.add_argument("--schema", required=True)
    c.set_defaults(handler=cli_schema.check)


def _add_sample(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from shared import cli_schema
    from shared.cli_options import seed_arg

    p = sub.add_parser("sample", help="sample rows from a released model")
    p.add_argument("--model", required=True, help="the model/ folder of a run")
    p.add_argument("--n", type=int, required=True, help="number of rows (at least 1)")
    p.add_argument("--out", default="synthetic.csv", help="CSV to write (not replaced)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="every row holds this category (repeatable; categorical columns)",
    )
    p.add_argument("--rebalance", metavar="COL", help="equal counts per category of COL")
    p.set_defaults(handler=cli_schema.sample)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the commands)."""
    from client import cli as client_cli
    from client.doctor import add_doctor_parser
    from deploy import cli as deploy_cli
    from server import cli as server_cli
    from shared.evaluation import cli as eval_cli
    from simulations import cli as sim_cli
    from simulations.audit import cli as audit_cli

    parser = argparse.ArgumentParser(
        prog="fedsynth",
        description="Federated, differentially private synthetic tables (Flower + Opacus).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sim_cli.add_parser(sub)
    server_cli.add_parser(sub)
    client_cli.add_parser(sub)
    add_doctor_parser(sub)
    deploy_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    audit_cli.add_parser(sub)
    _add_schema(sub)
    _add_sample(sub)
    return parser


log = logging.getLogger("fedsynth")
_stopping = False


def _terminate(signum: int, _frame: object) -> None:
    """Unwind on the first SIGTERM with one clear line; ignore repeats while stopping.

    A repeated SIGTERM (a second ``systemctl stop``, ``kill`` twice) would raise in the
    middle of the clean-up that stops Flower's processes and leave them running.
    """
    global _stopping
    if _stopping:
        return
    _stopping = True
    log.warning("stopping: received %s", signal.Signals(signum).name)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fedsynth``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    # SIGTERM (systemd, docker stop, kill) must unwind like Ctrl-C, so the Flower
    # processes fedsynth started are stopped and its temporary folders removed.
    signal.signal(signal.SIGTERM, _terminate)
    warnings.simplefilter("default")
    handler: Handler = args.handler
    try:
        return handler(args)
    except FedsynthError as exc:
        print(f"fedsynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
