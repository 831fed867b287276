"""``fedsynth doctor``: check a hospital site before it joins, and say how to fix each problem.

Every check returns a :class:`Finding` (``ok``, ``warn`` or ``fail``) with a fix,
so site IT gets one report instead of a stack trace on the first problem. The
checks read local files and open one TCP/TLS connection; they never train,
never send table contents and never write the privacy ledger (a missing ledger
is reported, not created, so running the doctor leaves the site unchanged).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from client.cli import add_site_options
from client.doctor_connect import Finding, check_ca, check_server, check_site_key
from client.errors import LedgerError, LedgerSiteMismatchError
from client.ledger import PrivacyLedger, never_recorded
from client.settings import LEDGER_FILE
from shared.errors import FedsynthError
from shared.schema import Schema
from shared.tables import load_table

#: Warn when less than this share of the site's total ε is left.
LOW_BUDGET_SHARE = 0.10


def check_schema(path: Path) -> tuple[Finding, Schema | None]:
    """Load the consortium's schema."""
    try:
        schema = Schema.load(path)
    except (FedsynthError, OSError) as exc:
        return Finding(
            "schema",
            "fail",
            f"schema {path} does not load: {exc}",
            "use the consortium's agreed schema JSON, byte for byte (ask the coordinator)",
        ), None
    return Finding(
        "schema", "ok", f"{schema.name!r}, fingerprint {schema.fingerprint()[:12]}"
    ), schema


def check_table(path: Path, schema: Schema | None) -> tuple[Finding, int | None]:
    """Validate the whole table against the schema; returns the row count when valid."""
    if schema is None:
        return Finding(
            "table", "warn", "not checked: the schema did not load", "fix the schema first"
        ), None
    try:
        frame = load_table(path, schema)
    except FedsynthError as exc:
        return Finding(
            "table",
            "fail",
            str(exc),
            "correct the export (columns, categories, ranges as listed), then run doctor again",
        ), None
    return Finding("table", "ok", f"{path}: {len(frame)} rows valid against the schema"), len(frame)


def check_gpu(is_available: Callable[[], bool] | None = None) -> Finding:
    """Whether training will use a GPU (the CPU works too, more slowly)."""
    import torch

    probe = is_available or torch.cuda.is_available
    if probe():
        return Finding("gpu", "ok", f"CUDA available: {torch.cuda.get_device_name(0)}")
    return Finding(
        "gpu",
        "ok",
        "no CUDA GPU found: the CPU will be used (slower, same privacy)",
    )


def check_ledger(
    state_dir: Path, *, site: str, budget_epsilon: float, budget_delta: float
) -> Finding:
    """Open the privacy ledger read-only and compare the spend with the budget."""
    ledger_path = state_dir / LEDGER_FILE
    if never_recorded(ledger_path):
        existing = next((p for p in (state_dir, *state_dir.parents) if p.exists()), Path("/"))
        if not os.access(existing, os.W_OK):
            return Finding(
                "ledger",
                "fail",
                f"no ledger yet, and {existing} is not writable by this user",
                f"create {state_dir} owned by the fedsynth user (it must survive restarts)",
            )
        return Finding(
            "ledger",
            "ok",
            f"no ledger yet at {ledger_path}: a new one starts with the full budget "
            f"ε={budget_epsilon:g}",
            "back up this folder once the site has trained",
        )
    if not os.access(state_dir, os.W_OK):
        return Finding(
            "ledger",
            "fail",
            f"{state_dir} is not writable: no round could be recorded",
            f"give the fedsynth user write access to {state_dir}",
        )
    try:
        ledger = PrivacyLedger.open(ledger_path, site=site)
        spent = ledger.epsilon(delta=budget_delta)
    except FedsynthError as exc:
        if isinstance(exc, LedgerSiteMismatchError):
            fix = "pass the site's own --site-name, or point --state-dir at its own ledger"
        elif isinstance(exc, LedgerError):
            fix = "restore the newest ledger and its .anchor from backup; never delete or edit them"
        else:
            fix = "check --budget-delta and the ledger"
        return Finding("ledger", "fail", str(exc), fix)
    left = budget_epsilon - spent
    summary = (
        f"ε spent {spent:.4f} of {budget_epsilon:g} at δ={budget_delta:g} over "
        f"{len(ledger.entries)} round(s); {max(left, 0.0):.4f} left (ledger {ledger_path})"
    )
    if left <= 0:
        return Finding(
            "ledger",
            "fail",
            f"budget exhausted: {summary}; the site will decline every round",
            "a larger budget needs the data steward's approval; otherwise this site is done",
        )
    if left < LOW_BUDGET_SHARE * budget_epsilon:
        return Finding(
            "ledger",
            "warn",
            f"less than {LOW_BUDGET_SHARE:.0%} of the budget left: {summary}",
            "expect the site to decline rounds soon; tell the coordinator",
        )
    return Finding("ledger", "ok", summary, "back up this folder regularly")


def check_delta(budget_delta: float, rows: int | None) -> Finding:
    """δ should be well below 1/n, or whole records may leak with probability δ."""
    if rows is None:
        return Finding("delta", "warn", "not checked: the table did not load", "fix the table")
    if budget_delta >= 1.0 / rows:
        return Finding(
            "delta",
            "warn",
            f"δ={budget_delta:g} is not below 1/n = {1.0 / rows:.3g} for n={rows} rows: "
            "the guarantee then allows leaking a whole record",
            f"choose --budget-delta below {0.1 / rows:.1g} (about 1/(10 n)) with the consortium",
        )
    return Finding("delta", "ok", f"δ={budget_delta:g} < 1/n = {1.0 / rows:.3g}")


def run_doctor(
    *,
    data: Path,
    schema: Path,
    budget_epsilon: float,
    budget_delta: float = 1e-5,
    state_dir: Path | None = None,
    site_name: str | None = None,
    superlink: str = "127.0.0.1:9092",
    ca: Path | None = None,
    key: Path | None = None,
    timeout: float = 3.0,
) -> list[Finding]:
    """Run every check for a site, with the same options as ``fedsynth client``.

    Returns
    -------
    list of Finding
        One or more per check, in a fixed order; never raises for a site problem.
    """
    findings: list[Finding] = []
    if not (budget_epsilon > 0 and 0 < budget_delta < 1):
        findings.append(
            Finding(
                "budget",
                "fail",
                f"budget ε={budget_epsilon:g}, δ={budget_delta:g} is invalid",
                "pass --budget-epsilon > 0 and --budget-delta in (0, 1)",
            )
        )
    schema_finding, loaded = check_schema(schema)
    table_finding, rows = check_table(data, loaded)
    findings += [schema_finding, table_finding]
    if 0 < budget_delta < 1:
        findings.append(check_delta(budget_delta, rows))
    findings += [check_ca(ca), check_site_key(key)]
    findings += check_server(superlink, ca, timeout=timeout)
    findings.append(check_gpu())
    if budget_epsilon > 0 and 0 < budget_delta < 1:
        findings.append(
            check_ledger(
                state_dir or data.parent / "fedsynth-state",
                site=site_name or data.stem,
                budget_epsilon=budget_epsilon,
                budget_delta=budget_delta,
            )
        )
    return findings


def format_report(findings: list[Finding]) -> str:
    """A plain-text report, one block per finding, ending with a summary line."""
    tags = {"ok": "  ok ", "warn": " WARN", "fail": " FAIL"}
    lines = []
    for f in findings:
        lines.append(f"[{tags[f.status]}] {f.check}: {f.message}")
        if f.fix and f.status != "ok":
            lines.append(f"         fix: {f.fix}")
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    verdict = (
        "ready to join, once the coordinator has registered this site's key under its name "
        "(not checked from here: compare the fingerprint above with `fedsynth server sites list`)"
        if not fails
        else "NOT ready: fix the FAIL lines above"
    )
    lines.append(f"{fails} failure(s), {warns} warning(s): {verdict}")
    return "\n".join(lines)


def exit_code(findings: list[Finding]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(f.status == "fail" for f in findings) else 0


def add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth doctor`` (same site options as ``fedsynth client``)."""
    p = sub.add_parser(
        "doctor",
        help="check a site's table, credentials, connection, GPU and ledger before it joins",
        description="Read-only: trains nothing, sends no data and does not create a ledger.",
    )
    add_site_options(p)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the server")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    findings = run_doctor(
        data=args.data,
        schema=args.schema,
        budget_epsilon=args.budget_epsilon,
        budget_delta=args.budget_delta,
        state_dir=args.state_dir,
        site_name=args.site_name,
        superlink=args.superlink,
        ca=args.ca,
        key=args.key,
        timeout=args.timeout,
    )
    print(format_report(findings))
    return exit_code(findings)
