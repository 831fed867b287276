"""Certificates and keys for a deployment, made with the ``cryptography`` package.

* The consortium's CA (``ca.crt``, ``ca.key``) signs the SuperLink's TLS
  certificate (``server.pem``, ``server.key``) for the hosts it is reached at.
  Sites receive only ``ca.crt``, to verify the SuperLink.
* Each site makes its own SuperNode identity key (ECDSA P-384, OpenSSH format,
  as ``flower-supernode --auth-supernode-private-key`` expects). The private key
  never leaves the site; the coordinator registers the ``.pub`` file.

Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.errors import CertificateError
from shared.ssh_keys import openssh_fingerprint

CURVE = ec.SECP384R1()
#: The CA outlives many server certificates, so renewing one (from the same CA) moves
#: its end date without sending the sites a new ca.crt.
CA_DAYS = 3650
SERVER_DAYS = 825
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class ServerCredentials:
    """Paths of the coordinator's TLS material."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> ServerCredentials:
        """The file names ``fedsynth certs server`` uses in ``folder``."""
        out = Path(folder)
        return cls(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def create_server_credentials(
    folder: str | Path,
    *,
    hosts: list[str],
    days: int = SERVER_DAYS,
    ca_days: int = CA_DAYS,
    organisation: str = "fedsynth consortium",
) -> ServerCredentials:
    """Create a CA and a SuperLink TLS certificate valid for ``hosts``.

    Parameters
    ----------
    folder : str or Path
        Output folder (created). Existing files are not overwritten.
    hosts : list of str
        DNS names and IP addresses the sites use to reach the SuperLink.
    days : int
        Validity of the server certificate, in days.
    ca_days : int
        Validity of the CA, in days (at least ``days``). A renewed server certificate
        (:func:`renew_server_certificate`) can end no later than the CA.
    """
    hosts = _with_loopback(hosts)
    out = Path(folder)
    creds = ServerCredentials.in_folder(out)
    existing = [p for p in creds.__dict__.values() if p.exists()]
    if existing:
        raise CertificateError(
            f"{existing[0]} already exists; refusing to overwrite the consortium's keys. "
            "Use another --out folder or remove the old files deliberately."
        )
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)
    ca_end = now + dt.timedelta(days=max(ca_days, days))
    ca_key = ec.generate_private_key(CURVE)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(ca_end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    srv_key, srv_cert = _server_certificate(
        ca_key, ca_name, hosts, not_before=start, not_after=now + dt.timedelta(days=days)
    )
    _write_private(creds.ca_key, _pem_private(ca_key))
    creds.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(creds.server_key, _pem_private(srv_key))
    creds.server_cert.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    return creds


def _with_loopback(hosts: list[str]) -> list[str]:
    if not hosts:
        raise CertificateError(
            "give at least one host name or IP address for the server certificate"
        )
    # `fedsynth server` submits the run to its own SuperLink over loopback (TLS), so
    # the certificate must be valid there too.
    return [*hosts, *(h for h in LOOPBACK_HOSTS if h not in hosts)]


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    hosts: list[str],
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh SuperLink key and its certificate for ``hosts``, signed by the CA."""
    srv_key = ec.generate_private_key(CURVE)
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return srv_key, srv_cert


def certificate_hosts(path: Path) -> list[str]:
    """The DNS names and IP addresses in a certificate's subject alternative names, in order."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound) as exc:
        raise CertificateError(
            f"cannot read the host names of {path} ({exc}); give them with --host "
            "(repeatable), e.g. --host coordinator.example.org"
        ) from None
    return [str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def renew_server_certificate(
    folder: str | Path, *, hosts: list[str] | None = None, days: int = SERVER_DAYS
) -> tuple[ServerCredentials, dt.datetime]:
    """Issue a new SuperLink key and certificate from the existing CA in ``folder``.

    The CA does not change, so the sites keep their ``ca.crt``. The old
    ``server.pem`` and ``server.key`` are kept as ``*.replaced-<UTC time>``. The new
    certificate ends no later than the CA does.

    Parameters
    ----------
    folder : str or Path
        The folder ``fedsynth certs server`` wrote.
    hosts : list of str, optional
        Host names and IP addresses for the new certificate; by default those of the
        certificate it replaces, so the sites' host-name checks keep passing.
    days : int
        Validity of the new certificate, in days (capped at the CA's end).

    Returns
    -------
    (ServerCredentials, datetime)
        The paths, and when the new certificate expires.

    Raises
    ------
    CertificateError
        If the CA files are missing or unreadable, or the CA has expired.
    """
    out = Path(folder)
    creds = ServerCredentials.in_folder(out)
    try:
        ca_cert = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(creds.ca_key.read_bytes(), None)  # unencrypted
    except (OSError, ValueError) as exc:
        raise CertificateError(
            f"cannot read the CA in {out} ({exc}); renewal needs that folder's ca.crt and "
            "ca.key (from `fedsynth certs server`)"
        ) from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{creds.ca_key} is not an EC private key")
    hosts = _with_loopback(hosts if hosts else certificate_hosts(creds.server_cert))
    now = dt.datetime.now(dt.UTC)
    if ca_cert.not_valid_after_utc <= now:
        raise CertificateError(
            f"the CA in {creds.ca_cert} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}: make "
            "a new one with `fedsynth certs server --out NEW_FOLDER` and send its ca.crt to "
            "every site"
        )
    end = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc).replace(microsecond=0)
    srv_key, srv_cert = _server_certificate(
        ca_key, ca_cert.subject, hosts, not_before=now - dt.timedelta(minutes=5), not_after=end
    )
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    for path in (creds.server_cert, creds.server_key):
        if path.exists():
            path.replace(path.with_name(f"{path.name}.replaced-{stamp}"))
    _write_private(creds.server_key, _pem_private(srv_key))
    creds.server_cert.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    return creds, end


def create_site_key(folder: str | Path, site: str) -> tuple[Path, Path]:
    """Create a site's SuperNode identity key pair.

    Returns
    -------
    (Path, Path)
        ``<site>.key`` (private, OpenSSH, mode 0600; stays at the site) and
        ``<site>.pub`` (public, OpenSSH; sent to the coordinator to register).
    """
    if not _SITE_NAME.match(site):
        raise CertificateError(
            f"site name {site!r} is not allowed; use letters, digits, '.', '_' or '-' (max 63)"
        )
    out = Path(folder)
    priv, pub = out / f"{site}.key", out / f"{site}.pub"
    if priv.exists() or pub.exists():
        raise CertificateError(
            f"{priv} already exists; a site keeps one identity key. To rotate it, write the "
            f"new key to another folder (--out {out}-new), then have the coordinator run "
            f"`fedsynth server sites remove {site} --state-dir DIR` and `sites add {site} --key` with the new "
            ".pub, and start the client with the new .key"
        )
    key = ec.generate_private_key(CURVE)
    _write_private(
        priv,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {site}\n".encode()
    )
    return priv, pub


def public_key_fingerprint(pub_path: str | Path) -> str:
    """SHA-256 fingerprint of an OpenSSH public key file, as ``ssh-keygen -lf`` prints it."""
    try:
        text = Path(pub_path).read_text(encoding="utf-8").strip()
        serialization.load_ssh_public_key(text.encode())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CertificateError(f"{pub_path} is not an OpenSSH public key ({exc})") from None
    return openssh_fingerprint(text)
