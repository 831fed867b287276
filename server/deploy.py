"""``fedsynth server``: the coordinator's SuperLink, site registry and run.

The SuperLink always runs with TLS and SuperNode authentication unless
``--insecure`` is given (local tests only, with a loud warning). Only sites
whose public keys are registered can join; the keys are registered before the
run is submitted. The ServerApp is the same one ``fedsynth simulate`` runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import DeploymentError
from server.flower import add_connection, build_app, submit_and_wait, wait_healthy
from shared.config import RunSettings, app_config_defaults
from shared.runtime import FlowerRuntime, flower_bin
from shared.schema import Schema

log = logging.getLogger("fedsynth.server")
CONNECTION = "consortium"


@dataclass(frozen=True)
class ServerOptions:
    """How the coordinator listens and whom it admits."""

    certs: Path | None
    site_keys: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 9092
    insecure: bool = False


def superlink_command(opts: ServerOptions) -> list[str]:
    """The ``flower-superlink`` command line (TLS + node authentication unless insecure)."""
    cmd = [
        flower_bin("flower-superlink"),
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--database",
        ":flwr-in-memory:",
    ]
    if opts.insecure:
        log.warning(
            "--insecure: TLS and SuperNode authentication are OFF; any process that can "
            "reach port %d can join. Use this only for local tests.",
            opts.port,
        )
        return [*cmd, "--insecure"]
    if opts.certs is None:
        raise DeploymentError(
            "--certs is required: a folder with ca.crt, server.pem and server.key "
            "(create them with `fedsynth certs server --out DIR`)"
        )
    files = {name: opts.certs / name for name in ("ca.crt", "server.pem", "server.key")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DeploymentError(
            f"missing TLS file(s) {missing}; create them with `fedsynth certs server`"
        )
    if not opts.site_keys:
        raise DeploymentError("no --site-key given: register at least one site's public key")
    return [
        *cmd,
        "--ssl-ca-certfile",
        str(files["ca.crt"]),
        "--ssl-certfile",
        str(files["server.pem"]),
        "--ssl-keyfile",
        str(files["server.key"]),
        "--enable-supernode-auth",
    ]


def register_sites(rt: FlowerRuntime, keys: list[Path]) -> list[str]:
    """Register each site's public key with the SuperLink; returns the site names."""
    names = []
    for key in keys:
        if not key.is_file():
            raise DeploymentError(f"site key {key} not found")
        name = key.stem
        rt.run(
            [
                flower_bin("flwr"),
                "supernode",
                "register",
                str(key),
                CONNECTION,
                "--name",
                name,
                "--format",
                "json",
            ]
        )
        names.append(name)
        log.info("registered site %s (%s)", name, key)
    return names


def list_sites(rt: FlowerRuntime) -> list[dict[str, Any]]:
    """SuperNodes known to the SuperLink, with their status."""
    res = rt.run([flower_bin("flwr"), "supernode", "list", CONNECTION, "--format", "json"])
    try:
        return list(json.loads(res.stdout).get("nodes", []))
    except ValueError as exc:
        raise DeploymentError(f"cannot read the SuperNode list ({exc})") from None


def run_server(opts: ServerOptions, overrides: dict[str, Any]) -> Path:
    """Start the SuperLink, register sites, run the federation, stop the SuperLink."""
    settings = RunSettings.from_run_config(overrides)  # fail fast before starting anything
    Schema.load(settings.schema_path)
    out = Path(settings.out_dir)
    cmd = superlink_command(opts)
    with FlowerRuntime.create() as rt:
        link_log = out / "logs" / "superlink.log"
        proc = rt.spawn(cmd, link_log)
        ca = None if opts.insecure or opts.certs is None else (opts.certs / "ca.crt").resolve()
        wait_healthy(proc, opts.port, link_log, ca_cert=ca)
        address = f"{'127.0.0.1' if opts.host in ('0.0.0.0', '::') else opts.host}:{opts.port}"
        add_connection(rt, CONNECTION, address, root_certificates=ca)
        if not opts.insecure:
            register_sites(rt, opts.site_keys)
        log.info(
            "SuperLink up on %s:%d; waiting for %d site(s) to connect",
            opts.host,
            opts.port,
            settings.min_sites,
        )
        app_dir = build_app(rt.root / "app", app_config_defaults())
        submit_and_wait(rt, app_dir, CONNECTION, overrides, out / "logs" / "run.log")
    return out
