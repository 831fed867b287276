"""Helpers for end-to-end tests that start real fedsynth / Flower processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from shared.accounting import RDP_ORDERS

FEDSYNTH = str(Path(sys.executable).parent / "fedsynth")


def run_cli(
    args: Sequence[str], *, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``fedsynth ARGS`` to completion."""
    return subprocess.run(
        [FEDSYNTH, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def start_cli(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``fedsynth ARGS`` in the background, in its own process group."""
    fh = open(log, "wb")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [FEDSYNTH, *args], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop a process group started by :func:`start_cli`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true or fail the test with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def ledger(state_dir: Path) -> dict[str, Any]:
    """A site's ledger document."""
    return dict(json.loads((state_dir / "privacy_ledger.json").read_text()))


def independent_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε from Opacus's RDP analysis directly (not through fedsynth's accountant code)."""
    rdp = sum(
        compute_rdp(q=q, noise_multiplier=s, steps=k, orders=list(RDP_ORDERS))
        for s, q, k in history
    )
    eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return max(0.0, float(eps))


def _process_table() -> dict[int, tuple[int, list[bytes]]]:
    """pid → (parent pid, command line) for every process we can read."""
    table = {}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc_dir / "stat").read_text()
            args = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(proc_dir.name)] = (ppid, args)
    return table


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid``, its descendants and the helpers Flower detached from any of them.

    This is how a machine dies (power loss, OOM killer): nothing gets to clean up.
    Returns the killed PIDs.
    """
    table = _process_table()
    doomed = {pid}
    grew = True
    while grew:
        grew = False
        for other, (ppid, args) in table.items():
            detached = any(
                a == b"--parent-pid" and args[i + 1].decode(errors="replace") in map(str, doomed)
                for i, a in enumerate(args[:-1])
            )
            if other not in doomed and (ppid in doomed or detached):
                doomed.add(other)
                grew = True
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return sorted(doomed)


def simulate_small(out: Path, *options: str, rows: int = 300) -> dict[str, Any]:
    """``fedsynth simulate --sites 2 OPTIONS``; check the released table, return the report.

    Asserts the run succeeded and wrote ``rows`` schema-valid synthetic rows; returns
    the parsed ``privacy_report.json``.
    """
    from shared.schema import Schema
    from shared.tables import load_table

    args = ["simulate", "--sites", "2", *options, "--synthetic-rows", str(rows)]
    res = run_cli([*args, "--out", str(out)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(load_table(out / "synthetic.csv", Schema.load(out / "schema.json"))) == rows
    report: dict[str, Any] = json.loads((out / "privacy_report.json").read_text())
    return report
