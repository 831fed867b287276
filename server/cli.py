"""``fedsynth server``: run the consortium's coordinator."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.deploy import ServerOptions, run_server
from server.errors import DeploymentError
from server.sites import SiteRegistry
from shared.cli_options import (
    add_aggregation_options,
    add_run_options,
    add_secagg_options,
    aggregation_overrides,
    run_overrides,
    secagg_overrides,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth server``."""
    p = sub.add_parser(
        "server",
        help="run the coordinator (SuperLink with TLS + site authentication, and the ServerApp)",
    )
    # Not required by argparse, so that `fedsynth server sites ...` parses; checked in _run.
    p.add_argument("--schema", type=Path, help="the consortium's schema JSON (required)")
    p.add_argument("--out", type=Path, help="output folder: model, table, report (required)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="the coordinator's state folder: its site registry (see `fedsynth server sites`)",
    )
    p.add_argument("--certs", type=Path, help="folder with ca.crt, server.pem, server.key")
    p.add_argument(
        "--site-key",
        type=Path,
        action="append",
        default=[],
        help="a site's public key, admitted in addition to the registry (repeat per site; "
        "the file stem is the site's name)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument(
        "--insecure", action="store_true", help="no TLS/authentication: local tests ONLY"
    )
    p.add_argument("--min-sites", type=int, default=2, help="sites needed for a round to count")
    p.add_argument("--synthetic-rows", type=int, default=10_000)
    p.add_argument("--round-timeout", type=float, default=600.0, help="seconds to wait per round")
    add_run_options(p)
    add_aggregation_options(p)
    # Deployment: on by default (a cautious consortium requires it).
    add_secagg_options(p, default=True)
    p.set_defaults(handler=_run)
    _add_sites(p.add_subparsers(dest="server_cmd", required=False, metavar="sites"))


def _add_sites(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fedsynth server sites add|remove|list``: the registry of admitted sites."""
    p = sub.add_parser("sites", help="add, remove or list the sites allowed to join")
    verbs = p.add_subparsers(dest="sites_cmd", required=True)
    add = verbs.add_parser("add", help="admit a site with its public key")
    add.add_argument("name", help="the site's name (letters, digits, '.', '_', '-')")
    add.add_argument("--key", type=Path, required=True, help="the site's .pub file")
    add.set_defaults(handler=_sites_add)
    rm = verbs.add_parser("remove", help="remove a site (a running server unregisters it)")
    rm.add_argument("name")
    rm.set_defaults(handler=_sites_remove)
    ls = verbs.add_parser("list", help="list the admitted sites and their key fingerprints")
    ls.set_defaults(handler=_sites_list)
    for verb in (add, rm, ls):
        verb.add_argument(
            "--state-dir", type=Path, required=True, help="the coordinator's state folder"
        )


def _sites_add(args: argparse.Namespace) -> int:
    site = SiteRegistry(args.state_dir).add(args.name, args.key)
    print(f"fedsynth: site {site.name} admitted (key {site.fingerprint})")
    return 0


def _sites_remove(args: argparse.Namespace) -> int:
    site = SiteRegistry(args.state_dir).remove(args.name)
    print(f"fedsynth: site {site.name} removed (key {site.fingerprint})")
    return 0


def _sites_list(args: argparse.Namespace) -> int:
    sites = SiteRegistry(args.state_dir).sites()
    for site in sites:
        print(f"{site.name}\t{site.fingerprint}")
    print(f"fedsynth: {len(sites)} site(s) in {SiteRegistry(args.state_dir).path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.schema is None or args.out is None:
        raise DeploymentError("fedsynth server needs --schema FILE and --out DIR")
    opts = ServerOptions(
        certs=args.certs,
        site_keys=list(args.site_key),
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        state_dir=args.state_dir,
    )
    overrides = {
        "schema-path": str(args.schema.resolve()),
        "out-dir": str(args.out.resolve()),
        "min-sites": args.min_sites,
        "synthetic-rows": args.synthetic_rows,
        "round-timeout": args.round_timeout,
        **run_overrides(args),
        **aggregation_overrides(args),
        **secagg_overrides(args),
    }
    out = run_server(opts, overrides)
    print(f"fedsynth: outputs in {out}")
    return 0
