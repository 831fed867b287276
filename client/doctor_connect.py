"""Credential and connection checks of ``fedsynth doctor``, and the :class:`Finding` they return.

The CA certificate, the site's identity key, and one TCP connection plus a TLS
handshake to the coordinator: what a hospital's IT staff fix (files from the
coordinator, file modes, firewalls) rather than its data staff.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from shared.ssh_keys import openssh_fingerprint, public_key_line

Status = Literal["ok", "warn", "fail"]
#: Warn when the CA certificate expires within this many days.
EXPIRY_WARN_DAYS = 30


@dataclass(frozen=True)
class Finding:
    """The result of one check.

    Attributes
    ----------
    check : str
        Short name of the check (``schema``, ``table``, ``ledger``, ...).
    status : {"ok", "warn", "fail"}
        ``fail`` means ``fedsynth client`` would refuse to run or could not connect.
    message : str
        What was found.
    fix : str
        What to do about it (empty when nothing needs doing).
    """

    check: str
    status: Status
    message: str
    fix: str = ""


def check_ca(path: Path | None, *, now: dt.datetime | None = None) -> Finding:
    """The consortium's CA certificate is readable, a CA, and valid today."""
    fix_get = "ask the coordinator for the consortium's ca.crt and pass it with --ca"
    if path is None:
        return Finding("ca", "fail", "no --ca given: the site cannot verify the server", fix_get)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Finding("ca", "fail", f"{path} is not a readable PEM certificate ({exc})", fix_get)
    now = now or dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        return Finding(
            "ca",
            "fail",
            f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check this machine's clock (NTP), or ask the coordinator for the current ca.crt",
        )
    if now > cert.not_valid_after_utc:
        return Finding(
            "ca",
            "fail",
            f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
            "ask the coordinator for the renewed ca.crt (fedsynth certs server)",
        )
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return Finding(
            "ca",
            "warn",
            f"{path} is not a CA certificate (it may be the server's own certificate)",
            "use ca.crt from the coordinator, not server.pem",
        )
    days_left = (cert.not_valid_after_utc - now).days
    if days_left < EXPIRY_WARN_DAYS:
        return Finding(
            "ca",
            "warn",
            f"{path} expires in {days_left} day(s) ({cert.not_valid_after_utc:%Y-%m-%d})",
            "ask the coordinator to renew the consortium's certificates in time",
        )
    return Finding(
        "ca", "ok", f"{path}: valid until {cert.not_valid_after_utc:%Y-%m-%d} ({days_left} days)"
    )


def check_site_key(path: Path | None) -> Finding:
    """The site's identity key is an unencrypted OpenSSH EC private key, private to this user."""
    fix_new = (
        "create one with `fedsynth certs site --name SITE --out DIR`, pass the .key with --key "
        "and send only the .pub to the coordinator"
    )
    if path is None:
        return Finding("site key", "fail", "no --key given: the site cannot authenticate", fix_new)
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        # TypeError: the key is passphrase-protected; the SuperNode cannot use such a key.
        return Finding(
            "site key", "fail", f"{path} is not an unencrypted OpenSSH private key ({exc})", fix_new
        )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return Finding(
            "site key",
            "fail",
            f"{path} is a {type(key).__name__}, not an elliptic-curve key as Flower requires",
            fix_new,
        )
    if path.stat().st_mode & 0o077:
        return Finding(
            "site key",
            "warn",
            f"{path} can be read by other users (mode {path.stat().st_mode & 0o777:o})",
            f"chmod 600 {path}",
        )
    public = public_key_line(path.read_bytes())
    return Finding(
        "site key",
        "ok",
        f"{path}: EC {key.curve.name} key, mode 600, fingerprint {openssh_fingerprint(public)} "
        "(`fedsynth server sites list` at the coordinator must show it under this --site-name)",
    )


def _split_address(superlink: str) -> tuple[str, int]:
    host, sep, port = superlink.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(superlink)
    return host.strip("[]"), int(port)


def check_server(superlink: str, ca: Path | None, *, timeout: float = 3.0) -> list[Finding]:
    """TCP connect to the coordinator, then a TLS handshake verified with the CA."""
    try:
        host, port = _split_address(superlink)
    except ValueError:
        return [
            Finding(
                "server",
                "fail",
                f"--superlink {superlink!r} is not HOST:PORT",
                "pass the coordinator's address, e.g. --superlink coordinator.example.org:9092",
            )
        ]
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return [
            Finding(
                "server",
                "fail",
                f"cannot reach {host}:{port} ({exc})",
                "check the address, that the coordinator is running, and that the hospital "
                f"firewall allows outgoing TCP to port {port}",
            )
        ]
    found = [Finding("server", "ok", f"{host}:{port} accepts TCP connections")]
    with sock:
        if ca is None or not ca.is_file():
            return found  # the CA finding already says what is missing
        found.append(_tls_handshake(sock, host, ca, timeout))
    return found


def _tls_handshake(sock: socket.socket, host: str, ca: Path, timeout: float) -> Finding:
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])  # gRPC speaks HTTP/2
        sock.settimeout(timeout)
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        return Finding(
            "tls",
            "fail",
            f"the server's certificate does not verify with {ca} ({exc.verify_message})",
            "use the consortium's current ca.crt, and connect with a host name the server "
            "certificate was issued for (fedsynth certs server --host NAME)",
        )
    except (ssl.SSLError, OSError) as exc:
        return Finding(
            "tls",
            "fail",
            f"TLS handshake with {host} failed ({exc})",
            "check that --superlink points at the fedsynth coordinator (not a proxy) "
            "and that it runs with TLS",
        )
    return Finding("tls", "ok", f"{version} handshake verified with {ca}")
