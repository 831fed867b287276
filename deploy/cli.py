"""``fedsynth certs``: create the consortium's TLS material and the sites' identity keys."""

from __future__ import annotations

import argparse

from deploy.certs import (
    create_server_credentials,
    create_site_key,
    public_key_fingerprint,
    renew_server_certificate,
)


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
        help="host name or IP sites connect to (repeatable; default 127.0.0.1, localhost)",
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
    hosts = args.host or ["127.0.0.1", "localhost"]
    if args.renew:
        renewed, end = renew_server_certificate(args.out, hosts=hosts)
        print(
            f"wrote {renewed.server_cert} and {renewed.server_key}, valid until {end:%Y-%m-%d} "
            "(the old ones are kept as *.replaced-*); restart `fedsynth server` to use them. "
            "The CA is unchanged: the sites need nothing new"
        )
        return 0
    creds = create_server_credentials(args.out, hosts=hosts)
    print(
        f"wrote {creds.ca_cert} (give to every site), {creds.server_cert}, {creds.server_key}, "
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
    create_server_credentials(args.out, hosts=args.host or ["127.0.0.1"])
    for i in range(args.sites):
        create_site_key(f"{args.out}/sites", f"site-{i}")
    print(f"wrote demo credentials for 127.0.0.1 and {args.sites} sites under {args.out}")
    return 0
