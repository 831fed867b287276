"""``fedsynth server``: run the consortium's coordinator."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.deploy import ServerOptions, run_server
from shared.cli_options import (
    add_run_options,
    add_secagg_options,
    run_overrides,
    secagg_overrides,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth server``."""
    p = sub.add_parser(
        "server",
        help="run the coordinator (SuperLink with TLS + site authentication, and the ServerApp)",
    )
    p.add_argument("--schema", type=Path, required=True, help="the consortium's schema JSON")
    p.add_argument("--out", type=Path, required=True, help="output folder (model, table, report)")
    p.add_argument("--certs", type=Path, help="folder with ca.crt, server.pem, server.key")
    p.add_argument(
        "--site-key",
        type=Path,
        action="append",
        default=[],
        help="a registered site's public key (repeat per site; the file stem is the site's name)",
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
    # Deployment: on by default (a cautious consortium requires it).
    add_secagg_options(p, default=True)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    opts = ServerOptions(
        certs=args.certs,
        site_keys=list(args.site_key),
        host=args.host,
        port=args.port,
        insecure=args.insecure,
    )
    overrides = {
        "schema-path": str(args.schema.resolve()),
        "out-dir": str(args.out.resolve()),
        "min-sites": args.min_sites,
        "synthetic-rows": args.synthetic_rows,
        "round-timeout": args.round_timeout,
        **run_overrides(args),
        **secagg_overrides(args),
    }
    out = run_server(opts, overrides)
    print(f"fedsynth: outputs in {out}")
    return 0
