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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from client.errors import SiteConfigError
from client.ledger import PrivacyLedger
from client.settings import SiteSettings
from shared.runtime import FlowerRuntime, flower_bin, free_port, write_toml_table
from shared.schema import Schema
from shared.tables import load_table

log = logging.getLogger("fedsynth.client")


@dataclass(frozen=True)
class SupernodeOptions:
    """How this site reaches the coordinator."""

    superlink: str
    ca_cert: Path | None
    private_key: Path | None
    insecure: bool = False
    port: int = 0
    max_retries: int = 0


def preflight(site: SiteSettings) -> str:
    """Check schema, table and ledger; return a one-line summary.

    Raises
    ------
    SchemaError, DataValidationError, LedgerError
        With the file, column and fix.
    """
    schema = Schema.load(site.schema_path)
    frame = load_table(site.data_path, schema)
    ledger = PrivacyLedger.open(site.ledger_path, site=site.site_name)
    spent = ledger.epsilon(delta=site.budget_delta)
    if spent >= site.budget_epsilon:
        log.warning(
            "site %s has spent its whole budget (ε=%.4f of %g); it will decline every round",
            site.site_name,
            spent,
            site.budget_epsilon,
        )
    return (
        f"site {site.site_name}: {len(frame)} rows valid against schema {schema.name!r} "
        f"({schema.fingerprint()[:12]}); ε spent {spent:.4f} of {site.budget_epsilon:g} "
        f"(δ={site.budget_delta:g}); ledger {site.ledger_path}"
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
    if opts.max_retries:
        cmd += ["--max-retries", str(opts.max_retries)]
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


def run_client(site: SiteSettings, opts: SupernodeOptions) -> int:
    """Preflight, then run the SuperNode in the foreground until it exits or is stopped."""
    print(preflight(site), flush=True)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    config_file = site.state_dir / "node-config.toml"
    config_file.write_text(write_toml_table(node_config(site)), encoding="utf-8")
    with FlowerRuntime.create() as rt:
        cmd = supernode_command(site, opts, config_file)
        proc = subprocess.Popen(cmd, env=rt.env(), start_new_session=True)
        rt.processes.append(proc)  # type: ignore[arg-type]

        def forward(signum: int, _frame: FrameType | None) -> None:
            proc.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
        return proc.wait()
