"""``fedsynth client``: run one site (a Flower SuperNode) on the site's own table."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.deploy import SupernodeOptions, preflight, run_client
from client.settings import SiteSettings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth client``."""
    p = sub.add_parser(
        "client",
        help="run a hospital site (Flower SuperNode)",
        description="The table never leaves this machine; only clipped, noised "
        "model updates and public accounting figures are sent.",
    )
    add_site_options(p)
    p.add_argument(
        "--insecure", action="store_true", help="no TLS, no authentication: local tests ONLY"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--secure-mode", action="store_true", help="cryptographically secure DP noise")
    p.add_argument(
        "--share-row-count",
        action="store_true",
        help="send this site's row count (private; off by default)",
    )
    p.add_argument(
        "--share-timing",
        action="store_true",
        help="send each round's training seconds (hints at the row count; off by default)",
    )
    p.add_argument("--port", type=int, default=0, help="local ClientApp API port (default: free)")
    p.add_argument("--max-retries", type=int, default=0, help="give up connecting after N tries")
    p.add_argument("--check", action="store_true", help="run the preflight only and exit")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    site = SiteSettings(
        site_name=args.site_name or args.data.stem,
        data_path=args.data,
        schema_path=args.schema,
        state_dir=args.state_dir or args.data.parent / "fedsynth-state",
        budget_epsilon=args.budget_epsilon,
        budget_delta=args.budget_delta,
        device=args.device,
        secure_mode=args.secure_mode,
        share_row_count=args.share_row_count,
        share_timing=args.share_timing,
    )
    if args.check:
        print(preflight(site))
        return 0
    opts = SupernodeOptions(
        superlink=args.superlink,
        ca_cert=args.ca.resolve() if args.ca else None,
        private_key=args.key.resolve() if args.key else None,
        insecure=args.insecure,
        port=args.port,
        max_retries=args.max_retries,
    )
    return run_client(site, opts)


def add_site_options(p: argparse.ArgumentParser) -> None:
    """Options that describe a site; shared by ``fedsynth client`` and ``fedsynth doctor``."""
    p.add_argument("--data", type=Path, required=True, help="the site's CSV or Parquet table")
    p.add_argument("--schema", type=Path, required=True, help="the consortium's schema JSON")
    p.add_argument(
        "--budget-epsilon",
        type=float,
        required=True,
        help="total ε this site will ever spend for the consortium",
    )
    p.add_argument("--budget-delta", type=float, default=1e-5, help="δ of that guarantee")
    p.add_argument("--state-dir", type=Path, help="privacy ledger folder (default: beside --data)")
    p.add_argument("--site-name", help="name in reports (default: data file stem)")
    p.add_argument("--superlink", default="127.0.0.1:9092", help="coordinator HOST:PORT")
    p.add_argument("--ca", type=Path, help="the consortium's ca.crt")
    p.add_argument("--key", type=Path, help="this site's identity key (fedsynth certs site)")
