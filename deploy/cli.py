"""``fedsynth certs``: create the consortium's TLS material and the sites' identity keys."""

from __future__ import annotations

import argparse

from deploy.certs import (
    CA_DAYS,
    SERVER_DAYS,
    certificate_hosts,
    create_server_credentials,
    create_site_key,
    public_key_fingerprint,
    renew_server_certificate,
)
from deploy.errors import CertificateError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth certs``."""
    p = sub.add_parser("certs", help="create CA, server certificate and site identity keys")
    ss = p.add_subparsers(dest="certs_cmd", required=True)
    s = ss.add_parser("server", help="(coordinator) CA + SuperLink TLS certificate")
    s.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    s.add_argument(
        "--host",
        action="append",
        default=None,
        help=(
            "host name or IP sites connect to (repeatable; default 127.0.0.1, localhost, "
            "or with --renew the names of the certificate it replaces)"
        ),
    )
    s.add_argument(
        "--days",
        type=int,
        default=SERVER_DAYS,
        help=f"validity of the server certificate in days (default {SERVER_DAYS}; the CA "
        f"gets {CA_DAYS} and a renewed certificate ends no later than it)",
    )
    s.add_argument(
        "--renew",
        action="store_true",
        help="new server key and certificate from the CA already in --out (sites keep ca.crt)",
    )
    s.set_defaults(handler=_server)
    k = ss.add_parser(
        "site", help="(site) identity key pair; send only the .pub to the coordinator"
    )
    k.add_argument("--out", required=True)
    k.add_argument("--name", required=True, help="site name, e.g. hospital-a")
    k.set_defaults(handler=_site)
    d = ss.add_parser(
        "demo", help="everything for a one-machine demo: server material + N site keys"
    )
    d.add_argument("--out", required=True)
    d.add_argument("--sites", type=int, default=3)
    d.add_argument(
        "--host",
        action="append",
        default=None,
        help="extra host name the sites use, e.g. a compose service name (loopback is always in)",
    )
    d.set_defaults(handler=_demo)


def _server(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise CertificateError(f"--days must be at least 1, got {args.days}")
    if args.renew:
        renewed, end = renew_server_certificate(args.out, hosts=args.host, days=args.days)
        print(
            f"wrote {renewed.server_cert} and {renewed.server_key} for "
            f"{', '.join(certificate_hosts(renewed.server_cert))}, valid until {end:%Y-%m-%d} "
            "(the old ones are kept as *.replaced-*); restart `fedsynth server` to use them. "
            "The CA is unchanged: the sites need nothing new"
        )
        return 0
    hosts = args.host or ["127.0.0.1", "localhost"]
    creds = create_server_credentials(args.out, hosts=hosts, days=args.days)
    print(
        f"wrote {creds.ca_cert} (give to every site), {creds.server_cert} for "
        f"{', '.join(certificate_hosts(creds.server_cert))}, {creds.server_key}, "
        f"{creds.ca_key} (keep offline)"
    )
    return 0


def _site(args: argparse.Namespace) -> int:
    priv, pub = create_site_key(args.out, args.name)
    print(
        f"wrote {priv} (stays at the site) and {pub} (send to the coordinator); "
        f"fingerprint {public_key_fingerprint(pub)}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    creds = create_server_credentials(args.out, hosts=args.host or ["127.0.0.1"])
    for i in range(args.sites):
        create_site_key(f"{args.out}/sites", f"site-{i}")
    hosts = ", ".join(certificate_hosts(creds.server_cert))
    print(f"wrote demo credentials for {hosts} and {args.sites} sites under {args.out}")
    return 0
