"""Renewing the SuperLink certificate from the existing CA (the sites keep ca.crt)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from deploy.certs import (
    CA_DAYS,
    SERVER_DAYS,
    create_server_credentials,
    renew_server_certificate,
)
from deploy.errors import CertificateError
from fedsynth.cli import main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _hosts(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def test_renewal_keeps_the_ca_and_issues_a_new_key_it_signed(tmp_path: Path) -> None:
    # Prepare
    creds = create_server_credentials(tmp_path, hosts=["old.example.org"])
    ca_before, old_cert = creds.ca_cert.read_bytes(), _cert(creds.server_cert)

    # Execute
    renewed, end = renew_server_certificate(tmp_path, hosts=["coordinator.example.org"])

    # Assert: same CA file; the new certificate verifies against it, for the new host.
    assert creds.ca_cert.read_bytes() == ca_before
    new_cert = _cert(renewed.server_cert)
    new_cert.verify_directly_issued_by(_cert(creds.ca_cert))
    assert new_cert.public_key() != old_cert.public_key()
    assert _hosts(new_cert) == {"coordinator.example.org", "127.0.0.1", "localhost"}
    assert new_cert.not_valid_after_utc == end
    kept = sorted(p.name.split(".replaced-")[0] for p in tmp_path.glob("*.replaced-*"))
    assert kept == ["server.key", "server.pem"]
    assert (renewed.server_key.stat().st_mode & 0o777) == 0o600


def test_a_renewed_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    create_server_credentials(tmp_path, hosts=["h"], days=30, ca_days=30)
    ca_end = _cert(tmp_path / "ca.crt").not_valid_after_utc

    _, end = renew_server_certificate(tmp_path, hosts=["h"], days=825)

    assert end == ca_end < dt.datetime.now(dt.UTC) + dt.timedelta(days=31)


def test_the_ca_outlives_the_server_certificate_so_renewal_moves_its_end(
    tmp_path: Path,
) -> None:
    creds = create_server_credentials(tmp_path, hosts=["h"], days=30)
    now = dt.datetime.now(dt.UTC)
    first_end = _cert(creds.server_cert).not_valid_after_utc
    assert _cert(creds.ca_cert).not_valid_after_utc > now + dt.timedelta(days=CA_DAYS - 1)

    _, end = renew_server_certificate(tmp_path, hosts=["h"])

    assert end > first_end + dt.timedelta(days=SERVER_DAYS - 31)


def test_renewal_keeps_the_replaced_certificates_host_names_by_default(tmp_path: Path) -> None:
    creds = create_server_credentials(tmp_path, hosts=["coordinator.example.org", "10.0.0.7"])
    before = _cert(creds.server_cert)

    renew_server_certificate(tmp_path)

    after = _cert(creds.server_cert)
    assert _hosts(after) == {"coordinator.example.org", "10.0.0.7", "127.0.0.1", "localhost"}
    assert after.subject == before.subject


def test_renewal_without_the_old_certificate_or_hosts_asks_for_host(tmp_path: Path) -> None:
    creds = create_server_credentials(tmp_path, hosts=["h"])
    creds.server_cert.unlink()

    with pytest.raises(CertificateError, match=r"server\.pem .*give them with --host"):
        renew_server_certificate(tmp_path)


def test_renewal_without_a_ca_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"cannot read the CA in .*fedsynth certs server"):
        renew_server_certificate(tmp_path, hosts=["h"])


def test_cli_renews_and_says_the_sites_need_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "server", "--out", str(tmp_path), "--host", "a.org"]) == 0
    capsys.readouterr()

    assert main(["certs", "server", "--out", str(tmp_path), "--renew", "--days", "90"]) == 0

    out = capsys.readouterr().out
    assert "for a.org, 127.0.0.1, localhost, valid until" in out
    assert "the sites need nothing new" in out
    end = _cert(tmp_path / "server.pem").not_valid_after_utc
    assert abs(end - dt.datetime.now(dt.UTC) - dt.timedelta(days=90)) < dt.timedelta(hours=1)


def test_the_server_refuses_an_expired_certificate_and_warns_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from server.deploy import check_server_certificate
    from server.errors import DeploymentError

    creds = create_server_credentials(tmp_path, hosts=["h"], days=10)
    with caplog.at_level("WARNING", logger="fedsynth.server"):
        check_server_certificate(creds.server_cert, warn_days=30)
    assert "certs server --renew" in caplog.text

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    with pytest.raises(DeploymentError, match=r"expired on .*certs server --renew --out"):
        check_server_certificate(creds.server_cert, now=later)
