"""``fedsynth audit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli_options import add_run_options, run_overrides
from simulations.audit.audit import MODES
from simulations.audit.report import AuditPlan, run_audit

_DESCRIPTION = """\
Empirical privacy audit (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023). Inserts canaries at a throwaway copy of one site, trains
with the site's real DP-SGD code and the run's settings, runs a membership-inference
test on the canaries, and reports an empirical ε lower bound at 95% confidence, next
to a positive control (σ = 0) that shows whether the audit is strong enough to mean
anything. The default white-box mode inserts Dirac gradient canaries into every
DP-SGD step's clipped sum (before the noise) and scores each on the released
gradients; --mode black-box inserts canary records and scores final-model losses.

No privacy ledger is opened or charged: the models are throwaways.

WARNING: an audit is a re-identification attempt (a membership-inference attack) on
the rows it is given. Never point --data at a table whose terms of use forbid
re-identification attempts; use the built-in cohort or data you may attack.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth audit``."""
    p = sub.add_parser(
        "audit",
        help="empirical ε lower bound with canaries (one-run audit; charges no ledger)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        type=Path,
        help="the site's CSV/Parquet table (default: site-0 of the built-in cohort). "
        "Never a table whose terms forbid re-identification attempts.",
    )
    p.add_argument("--schema", type=Path, help="public schema JSON (required with --data)")
    p.add_argument("--canaries", type=int, default=1000, help="number m of canaries (default 1000)")
    p.add_argument(
        "--positive-control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also audit σ = 0, to check the audit's strength (default on)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="white-box",
        help="white-box: gradient canaries scored on every DP-SGD step's released gradient "
        "(default, strongest); black-box: record canaries scored on final-model losses",
    )
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", type=Path, default=Path("runs/audit"))
    add_run_options(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    plan = AuditPlan(
        out=args.out,
        data=args.data,
        schema=args.schema,
        overrides=run_overrides(args),
        canaries=args.canaries,
        positive_control=args.positive_control,
        device=args.device,
        mode=args.mode,
    )
    report = run_audit(plan)
    control = report["positive_control_lower_bound"]
    print(f"claimed ε                      {report['claimed_epsilon']:g}")
    print(f"audit lower bound (95%)        {report['audit_lower_bound']:.3f}")
    if control is not None:
        print(f"positive-control lower bound   {control:.3f}")
    print(report["verdict"])
    print(f"fedsynth: audit report {args.out / 'audit.md'} and {args.out / 'audit.json'}")
    return 0
