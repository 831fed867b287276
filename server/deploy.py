"""``fedsynth server``: the coordinator's SuperLink, site registry and run.

The SuperLink always runs with TLS and SuperNode authentication unless
``--insecure`` is given (local tests only, with a loud warning). Only sites
whose public keys are registered can join; the keys are registered before the
run is submitted. The ServerApp is the same one ``fedsynth simulate`` runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from server.errors import DeploymentError
from server.flower import (
    add_connection,
    build_app,
    host_port,
    submit_and_wait,
    wait_healthy,
)
from server.identity import NODES_FILE, write_site_nodes
from server.sites import SiteRegistry, key_fingerprint
from shared.config import RunSettings, app_config_defaults
from shared.models import build_generator
from shared.runtime import FlowerRuntime, flower_bin
from shared.schema import Schema

log = logging.getLogger("fedsynth.server")
#: Days before the server certificate ends from which each start warns.
RENEW_WARN_DAYS = 30
CONNECTION = "consortium"


@dataclass(frozen=True)
class ServerOptions:
    """How the coordinator listens and whom it admits."""

    certs: Path | None
    site_keys: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 9092
    insecure: bool = False
    state_dir: Path | None = None

    def admitted(self) -> dict[str, str]:
        """Site name → OpenSSH public key: the registry in ``state_dir`` plus ``site_keys``.

        Raises
        ------
        DeploymentError
            If a key file is missing or two entries share a name or a key.
        """
        registry = SiteRegistry(self.state_dir).sites() if self.state_dir else []
        sites = {s.name: s.public_key for s in registry}
        for key in self.site_keys:
            if not key.is_file():
                raise DeploymentError(f"site key {key} not found")
            if key.stem in sites:
                raise DeploymentError(
                    f"site {key.stem!r} is given twice (--site-key {key} and the registry); "
                    "drop the --site-key"
                )
            sites[key.stem] = key.read_text(encoding="utf-8").strip()
        prints = [key_fingerprint(k, source=f"the key of site {n}") for n, k in sites.items()]
        if len(set(prints)) != len(prints):
            raise DeploymentError("two sites share one public key; each site needs its own")
        return sites


def check_enough_sites(opts: ServerOptions, admitted: int, min_sites: int) -> None:
    """Refuse (or, with a registry that may still grow, warn about) too few admitted sites.

    Raises
    ------
    DeploymentError
        Only ``--site-key`` files admit sites, and fewer than ``min_sites``: the run
        could never start.
    """
    if admitted >= min_sites:
        return
    if opts.state_dir is None:
        raise DeploymentError(
            f"--min-sites {min_sites} but only {admitted} site key(s) are given: the run "
            "would wait for ever. Give every site's --site-key, or lower --min-sites"
        )
    log.warning(
        "--min-sites %d but the registry in %s admits only %d site(s): the run waits until "
        "%d registered sites connect. Add sites with `fedsynth server sites add`, or "
        "lower --min-sites",
        min_sites,
        opts.state_dir,
        admitted,
        min_sites,
    )


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
    check_server_certificate(files["server.pem"])
    if not opts.admitted():
        raise DeploymentError(
            "no site is registered: `fedsynth server sites add NAME --key NAME.pub "
            "--state-dir DIR` (then pass --state-dir DIR), or give --site-key"
        )
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


def check_server_certificate(
    path: Path, *, warn_days: int = RENEW_WARN_DAYS, now: dt.datetime | None = None
) -> None:
    """Refuse an expired SuperLink certificate; warn when it ends within ``warn_days``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise DeploymentError(f"{path} is not a PEM certificate ({exc})") from None
    end = cert.not_valid_after_utc
    renew = f"renew it from the same CA: `fedsynth certs server --renew --out {path.parent}`"
    left = end - (now or dt.datetime.now(dt.UTC))
    if left <= dt.timedelta(0):
        raise DeploymentError(f"the server certificate {path} expired on {end:%Y-%m-%d}; {renew}")
    if left < dt.timedelta(days=warn_days):
        log.warning("the server certificate %s ends on %s; %s", path, f"{end:%Y-%m-%d}", renew)


def register_site(rt: FlowerRuntime, name: str, public_key: str) -> int:
    """Register one site's public key with the SuperLink; returns its node id."""
    key_file = rt.root / "site-keys" / f"{name}.pub"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(public_key + "\n", encoding="utf-8")
    cmd = [flower_bin("flwr"), "supernode", "register", str(key_file), CONNECTION]
    res = rt.run([*cmd, "--name", name, "--format", "json"])
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("node-id"), int):
        said = doc.get("error-message") if isinstance(doc, dict) else res.stdout.strip()
        raise DeploymentError(f"the SuperLink did not register site {name}: {said or 'no reply'}")
    node_id = int(doc["node-id"])
    log.info("registered site %s (node %d)", name, node_id)
    return node_id


def register_sites(rt: FlowerRuntime, sites: dict[str, str]) -> dict[str, int]:
    """Register each site (name → public key); returns name → node id."""
    return {name: register_site(rt, name, key) for name, key in sorted(sites.items())}


class RegistryFollower(threading.Thread):
    """Keep the running SuperLink's registrations equal to the registry file.

    A site removed with ``fedsynth server sites remove`` is unregistered (it can
    no longer pull messages); a site added is registered; a site whose key
    changed is unregistered and registered again. Polls every ``interval``
    seconds until :meth:`stop`.
    """

    def __init__(
        self,
        rt: FlowerRuntime,
        opts: ServerOptions,
        registered: dict[str, str],
        nodes: dict[str, int],
        interval: float = 2.0,
        nodes_file: Path | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.rt, self.opts, self.interval = rt, opts, interval
        self.keys, self.nodes = dict(registered), dict(nodes)
        self.nodes_file = nodes_file  # the ServerApp's node id → name map (server.identity)
        # Flower's SuperLink keeps an unregistered node's key for its lifetime and
        # refuses to register it again, so a revoked key is told once, not retried.
        self.revoked: set[str] = set()
        self._told: set[tuple[str, str]] = set()
        self._halt = threading.Event()  # not `_stop`: Thread uses that name itself

    def sync(self) -> None:
        """Apply the differences between the registry and the SuperLink."""
        try:
            wanted = self.opts.admitted()
        except Exception as exc:  # a damaged file must not stop the run: keep the last state
            log.error("site registry not applied: %s", exc)
            return
        before = dict(self.nodes)
        try:
            self._apply(wanted)
        finally:
            if self.nodes_file is not None and self.nodes != before:
                write_site_nodes(self.nodes_file, self.nodes)

    def _apply(self, wanted: dict[str, str]) -> None:
        for name in sorted(self.nodes):
            if wanted.get(name) != self.keys[name]:
                cmd = [flower_bin("flwr"), "supernode", "unregister", str(self.nodes[name])]
                self.rt.run([*cmd, CONNECTION])
                log.warning("site %s was removed from the registry: unregistered", name)
                self.revoked.add(self.keys[name])
                del self.nodes[name], self.keys[name]
        for name in sorted(set(wanted) - set(self.nodes)):
            if wanted[name] in self.revoked:
                if (name, wanted[name]) not in self._told:
                    self._told.add((name, wanted[name]))
                    log.error(
                        "site %s was re-added with the key it had when it was removed; this "
                        "SuperLink never accepts a revoked key again. Either the site makes a "
                        "new key (`fedsynth certs site --name %s --out NEW_FOLDER`) and you "
                        "re-add it with that .pub, or the site joins the next run (restart "
                        "`fedsynth server`)",
                        name,
                        name,
                    )
                continue
            self.nodes[name] = register_site(self.rt, name, wanted[name])
            self.keys[name] = wanted[name]

    def run(self) -> None:
        """Poll until stopped."""
        while not self._halt.wait(self.interval):
            try:
                self.sync()
            except Exception as exc:  # keep following; the next poll retries
                log.error("site registry sync failed: %s", exc)

    def stop(self) -> None:
        """Stop following (the run is over)."""
        self._halt.set()
        self.join(timeout=10)


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
    # A generator that cannot model this schema is refused here, not inside the run.
    build_generator(Schema.load(settings.schema_path), settings.model)
    out = Path(settings.out_dir)
    cmd = superlink_command(opts)
    with FlowerRuntime.create() as rt:
        link_log = out / "logs" / "superlink.log"
        proc = rt.spawn(cmd, link_log)
        ca = None if opts.insecure or opts.certs is None else (opts.certs / "ca.crt").resolve()
        local = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
        wait_healthy(proc, opts.port, link_log, ca_cert=ca, host=local)
        address = host_port(local, opts.port)
        add_connection(rt, CONNECTION, address, root_certificates=ca)
        follower = None
        if not opts.insecure:
            admitted = opts.admitted()
            check_enough_sites(opts, len(admitted), settings.min_sites)
            nodes = register_sites(rt, admitted)
            # The ServerApp names each reply by the node id's registered site.
            nodes_file = rt.root / NODES_FILE
            write_site_nodes(nodes_file, nodes)
            overrides = {**overrides, "site-nodes": str(nodes_file)}
            follower = RegistryFollower(rt, opts, admitted, nodes, nodes_file=nodes_file)
            follower.start()
        log.info(
            "SuperLink up on %s:%d; waiting for %d site(s) to connect",
            opts.host,
            opts.port,
            settings.min_sites,
        )
        app_dir = build_app(rt.root / "app", app_config_defaults())
        try:
            submit_and_wait(rt, app_dir, CONNECTION, overrides, out / "logs" / "run.log")
        finally:
            if follower is not None:
                follower.stop()
    return out
