"""``fedsynth client``: run one hospital's SuperNode.

Before anything connects, a preflight checks the schema, the whole table, the
privacy ledger and the credentials, so a problem is reported at the site, with
its fix, before the coordinator ever hears of it. Then a Flower SuperNode is
started with TLS (the consortium's CA) and the site's identity key, and the
site's settings are handed to it as a node-config TOML file.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from types import FrameType
from typing import Any

from client.doctor_connect import check_ca
from client.errors import BudgetExhaustedError, SiteConfigError
from client.ledger import PrivacyLedger, never_recorded
from client.settings import SiteSettings
from shared.errors import ConfigError
from shared.runtime import FlowerRuntime, flower_bin, free_port, stop_process, write_toml_table
from shared.schema import Schema
from shared.ssh_keys import openssh_fingerprint, public_key_line
from shared.tables import load_table

log = logging.getLogger("fedsynth.client")
ACTIVATION_FAILED = b"Exit Code: 305"  # flower-supernode: the SuperLink refused activation
TLS_UNTRUSTED = b"CERTIFICATE_VERIFY_FAILED"  # the coordinator's certificate is not our CA's
CONNECTED = b"SuperNode ID"  # flower-supernode: activated at the SuperLink
RETRY_SECONDS = 5.0
# How long a site that was connected waits for a coordinator that went away to come
# back (a restart) before it exits, e.g. at the end of a run.
RECONNECT_WINDOW = 600.0


@dataclass(frozen=True)
class SupernodeOptions:
    """How this site reaches the coordinator."""

    superlink: str
    ca_cert: Path | None
    private_key: Path | None
    insecure: bool = False
    port: int = 0
    max_retries: int = 0


def require_secure_rng(site: SiteSettings) -> None:
    """Refuse ``--secure-mode`` up front where Opacus's secure generator cannot load.

    Otherwise the site would start, join, and fail at its first round.
    """
    if site.secure_mode and util.find_spec("torchcsprng") is None:
        raise SiteConfigError(
            "--secure-mode needs the torchcsprng package (Opacus's cryptographically secure "
            f"generator), which is not installed for torch {metadata.version('torch')}. Install a "
            "torchcsprng build for this torch, or start without --secure-mode: noise and "
            "sampling then come from generators with a 128-bit secret state "
            "(client/randomness.py)"
        )


def preflight(site: SiteSettings) -> str:
    """Check schema, table and ledger; return a one-line summary.

    Raises
    ------
    SchemaError, DataValidationError, LedgerError
        With the file, column and fix.
    BudgetExhaustedError
        The site has spent its whole budget: it could only decline.
    """
    require_secure_rng(site)
    schema = Schema.load(site.schema_path)
    frame = load_table(site.data_path, schema)
    rows = f"site {site.site_name}: {len(frame)} rows valid against schema {schema.name!r} "
    rows += f"({schema.fingerprint()[:12]})"
    if never_recorded(site.ledger_path):
        # A check creates nothing: a mistyped --state-dir must not leave an empty
        # ledger folder that a later run would take for this site's.
        return (
            f"{rows}; NO privacy ledger at {site.ledger_path}: the first round will start one "
            f"with the full budget ε={site.budget_epsilon:g}. If this site has taken part "
            "before, its ledger is elsewhere: use the same --state-dir and --site-name as then"
        )
    # Opening an existing ledger (or a lone anchor, which fails closed) writes nothing.
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name)
    spent = ledger.epsilon(delta=site.budget_delta)
    if spent >= site.budget_epsilon:
        raise BudgetExhaustedError(
            f"site {site.site_name!r} has spent its whole budget (ε={spent:.4f} of "
            f"{site.budget_epsilon:g}, ledger {site.ledger_path}); it would decline every "
            "round, so it does not start. A larger --budget-epsilon needs the data "
            "steward's approval; otherwise this site is done"
        )
    return (
        f"{rows}; ε spent {spent:.4f} of {site.budget_epsilon:g} "
        f"(δ={site.budget_delta:g}) over {len(ledger.entries)} recorded charge(s) (rounds and releases); "
        f"ledger {site.ledger_path}"
    )


def node_config(site: SiteSettings) -> dict[str, str | float | bool]:
    """The SuperNode's node config (read back by :meth:`SiteSettings.from_context`)."""
    return {
        "data-path": str(site.data_path.resolve()),
        "schema-path": str(site.schema_path.resolve()),
        "state-dir": str(site.state_dir.resolve()),
        "site-name": site.site_name,
        "budget-epsilon": float(site.budget_epsilon),
        "budget-delta": float(site.budget_delta),
        "device": site.device,
        "secure-mode": site.secure_mode,
        "share-row-count": site.share_row_count,
        "share-timing": site.share_timing,
    }


def supernode_command(site: SiteSettings, opts: SupernodeOptions, config_file: Path) -> list[str]:
    """The ``flower-supernode`` command line for this site."""
    cmd = [
        flower_bin("flower-supernode"),
        "--superlink",
        opts.superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(opts.port or free_port()),
        "--node-config",
        str(config_file),
    ]
    if opts.insecure:
        log.warning(
            "--insecure: the connection to the coordinator is NOT encrypted and the site "
            "is not authenticated. Use this only for local tests."
        )
        return [*cmd, "--insecure"]
    if opts.ca_cert is None or not opts.ca_cert.is_file():
        raise SiteConfigError(
            f"CA certificate {opts.ca_cert} not found; pass --ca with the "
            "consortium's ca.crt (or --insecure for local tests only)"
        )
    ca = check_ca(opts.ca_cert)
    if ca.status == "fail":  # Flower would print a traceback and retry for ever
        raise SiteConfigError(f"--ca: {ca.message}; {ca.fix}")
    if opts.private_key is None or not opts.private_key.is_file():
        raise SiteConfigError(
            f"site key {opts.private_key} not found; create it with "
            "`fedsynth certs site --name SITE --out DIR` and register the .pub"
        )
    return [
        *cmd,
        "--root-certificates",
        str(opts.ca_cert),
        "--auth-supernode-private-key",
        str(opts.private_key),
    ]


def identity_line(site: SiteSettings, private_key: Path) -> str:
    """Which key this site joins with, and the name the coordinator must have given it.

    The coordinator binds names to keys (:mod:`server.identity`; a site under another
    name refuses every message, :mod:`client.identity`). Printed at start-up, so that the
    hospital can compare it with the coordinator's ``sites list`` before the run.
    """
    try:
        print_ = openssh_fingerprint(public_key_line(private_key.read_bytes()))
    except (OSError, ConfigError) as exc:
        raise SiteConfigError(f"cannot read the site key {private_key}: {exc}") from None
    return (
        f"site {site.site_name} joins with key {print_}: the coordinator must have registered "
        f"this key under the name {site.site_name!r} (`fedsynth server sites list` shows "
        "names and fingerprints); under another name, this site refuses every message"
    )


def run_client(site: SiteSettings, opts: SupernodeOptions) -> int:
    """Preflight, then run the SuperNode until it exits or is stopped.

    Flower gives up quickly when the coordinator refuses to activate a node
    (exit code 305): the SuperLink may not be up yet, or this site's key is not
    registered. It also stops when the coordinator restarts. The SuperNode is then
    restarted after a pause, up to ``opts.max_retries`` times (0 = keep waiting);
    once connected, a site waits :data:`RECONNECT_WINDOW` seconds for a coordinator
    that went away, then exits (the run is over).
    """
    print(preflight(site), flush=True)
    if not opts.insecure and opts.private_key is not None and opts.private_key.is_file():
        print(identity_line(site, opts.private_key), flush=True)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    config_file = site.state_dir / "node-config.toml"
    config_file.write_text(write_toml_table(node_config(site)), encoding="utf-8")
    stopping = False
    attempt = 0
    gone_since: float | None = None
    with FlowerRuntime.create() as rt:
        while True:
            attempt += 1
            proc = subprocess.Popen(
                supernode_command(site, opts, config_file),
                env=rt.env(),
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            rt.processes.append(proc)

            def forward(signum: int, _frame: FrameType | None, proc: Any = proc) -> None:
                nonlocal stopping
                # Flower's handler resets itself on the first signal: a second one that
                # lands while it runs prints "Signal N ignored due to race condition".
                if stopping:
                    return
                stopping = True
                log.warning("stopping: received %s", signal.Signals(signum).name)
                proc.send_signal(signum)

            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, forward)
            relay = _Relay(proc)
            code = proc.wait()
            refused = relay.finish()
            stop_process(proc)  # reap the SuperExec Flower detached from it
            if stopping:
                return code
            if not refused:
                if relay.connected:
                    gone_since = time.monotonic()
                elif gone_since is not None and (time.monotonic() - gone_since > RECONNECT_WINDOW):
                    log.warning(
                        "the coordinator has been gone for %.0f s; stopping (the run is over)",
                        time.monotonic() - gone_since,
                    )
                    return code
            if opts.max_retries and attempt >= opts.max_retries:
                log.error(
                    "the coordinator did not accept this site after %d attempt(s). Check that "
                    "--superlink is right and that the coordinator registered %s",
                    attempt,
                    opts.private_key.with_suffix(".pub") if opts.private_key else "this site's key",
                )
                return code
            if relay.untrusted:
                log.error(
                    "the coordinator's TLS certificate is not signed by --ca %s: check that "
                    "it is the consortium's ca.crt (and --superlink the right host); "
                    "retrying in %.0f s (attempt %d)",
                    opts.ca_cert,
                    RETRY_SECONDS,
                    attempt,
                )
            elif refused:
                log.warning(
                    "the coordinator is not reachable yet or has not registered this site's "
                    "key; retrying in %.0f s (attempt %d)",
                    RETRY_SECONDS,
                    attempt,
                )
            else:
                # Flower's SuperNode gives up when the coordinator restarts (it forgets
                # the node): reconnect, so a restarted coordinator finds its sites again.
                log.warning(
                    "the SuperNode stopped (exit code %s): the coordinator went away or "
                    "restarted; reconnecting in %.0f s (attempt %d)",
                    code,
                    RETRY_SECONDS,
                    attempt,
                )
            time.sleep(RETRY_SECONDS)
            if stopping:  # stopped between two attempts: do not start another
                return code


class _Relay(threading.Thread):
    """Copy the SuperNode's output to ours and watch for a refused activation.

    Runs in a thread because Flower's detached SuperExec inherits the pipe and
    can keep it open after the SuperNode itself has exited.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc, self.refused, self.untrusted, self.connected = proc, False, False, False
        self.start()

    def run(self) -> None:
        for line in self.proc.stdout or ():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            self.refused = self.refused or ACTIVATION_FAILED in line
            self.untrusted = self.untrusted or TLS_UNTRUSTED in line
            self.connected = self.connected or CONNECTED in line

    def finish(self) -> bool:
        """Wait briefly for the last lines; return whether activation was refused."""
        self.join(timeout=2.0)
        if self.proc.stdout is not None and not self.is_alive():
            self.proc.stdout.close()
        return self.refused
