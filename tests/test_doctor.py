"""Unit tests for :mod:`client.doctor`: each check's ok and fail case, on temporary files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.doctor import (
    add_doctor_parser,
    check_delta,
    check_gpu,
    check_ledger,
    check_schema,
    check_table,
    exit_code,
    format_report,
    run_doctor,
)
from client.doctor_connect import check_ca, check_server, check_site_key
from client.ledger import PrivacyLedger
from client.settings import LEDGER_FILE
from deploy.certs import CA_DAYS, ServerCredentials, create_server_credentials, create_site_key
from tests.conftest import SMALL_SCHEMA_DOC

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")
SITE = "hospital-a"


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SMALL_SCHEMA_DOC), encoding="utf-8")
    return path


@pytest.fixture
def table_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.csv"
    rows = "".join(
        f"{20 + i % 60},{'female' if i % 2 else 'male'},{22.5 + i % 9}\n" for i in range(50)
    )
    path.write_text("age,sex,bmi\n" + rows, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> ServerCredentials:
    return create_server_credentials(
        tmp_path_factory.mktemp("certs"), hosts=["127.0.0.1", "localhost"]
    )


@pytest.fixture
def site_key(tmp_path: Path) -> Path:
    return create_site_key(tmp_path / "keys", SITE)[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
def tcp_server() -> Iterator[int]:
    """A listening socket on 127.0.0.1 (accepts, never speaks)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        yield int(srv.getsockname()[1])


@pytest.fixture
def tls_server(creds: ServerCredentials) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting the consortium-signed server certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(creds.server_cert, creds.server_key)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass  # the client may hang up first; the test checks the client's view

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(srv.getsockname()[1])
    srv.close()
    thread.join(timeout=5)


# ---------------------------------------------------------------- schema and table
def test_schema_ok_and_fail(schema_file: Path, tmp_path: Path) -> None:
    finding, schema = check_schema(schema_file)
    assert finding.status == "ok" and schema is not None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    finding, schema = check_schema(bad)
    assert finding.status == "fail" and schema is None
    assert "bad.json" in finding.message and finding.fix


def test_table_ok_and_fail_reports_the_error(
    schema_file: Path, table_file: Path, tmp_path: Path
) -> None:
    _, schema = check_schema(schema_file)
    finding, rows = check_table(table_file, schema)
    assert finding.status == "ok" and rows == 50
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex,bmi\n17,unknown,20\n", encoding="utf-8")
    finding, rows = check_table(bad, schema)
    assert finding.status == "fail" and rows is None
    assert "age" in finding.message and "sex" in finding.message and finding.fix


def test_table_not_checked_without_schema(table_file: Path) -> None:
    finding, _ = check_table(table_file, None)
    assert finding.status == "warn"


# ---------------------------------------------------------------- credentials
def test_ca_ok(creds: ServerCredentials) -> None:
    assert check_ca(creds.ca_cert).status == "ok"


def test_ca_missing_expired_not_yet_valid_and_not_a_ca(
    creds: ServerCredentials, tmp_path: Path
) -> None:
    assert check_ca(None).status == "fail"
    assert check_ca(tmp_path / "nope.crt").status == "fail"
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=CA_DAYS + 75)
    expired = check_ca(creds.ca_cert, now=late)
    assert expired.status == "fail" and "expired" in expired.message
    early = check_ca(creds.ca_cert, now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    assert early.status == "fail" and "clock" in early.fix
    soon = check_ca(creds.ca_cert, now=late - dt.timedelta(days=80))
    assert soon.status == "warn" and "expires" in soon.message
    assert check_ca(creds.server_cert).status == "warn"


def test_site_key_ok_with_the_fingerprint_the_coordinator_lists(site_key: Path) -> None:
    from deploy.certs import public_key_fingerprint

    finding = check_site_key(site_key)
    assert finding.status == "ok", finding.message
    expected = public_key_fingerprint(site_key.with_suffix(".pub"))
    assert f"fingerprint {expected} " in finding.message


def test_site_key_fail_cases(site_key: Path, creds: ServerCredentials, tmp_path: Path) -> None:
    assert check_site_key(None).status == "fail"
    # A PEM (PKCS#8) key is not what flower-supernode accepts.
    assert check_site_key(creds.server_key).status == "fail"
    ed = tmp_path / "ed.key"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    wrong_type = check_site_key(ed)
    assert wrong_type.status == "fail" and "elliptic" in wrong_type.message
    site_key.chmod(0o644)
    assert check_site_key(site_key).status == "warn"


# ---------------------------------------------------------------- server
def test_server_unreachable_fails() -> None:
    found = check_server(f"127.0.0.1:{_closed_port()}", None, timeout=1.0)
    assert [f.status for f in found] == ["fail"] and "firewall" in found[0].fix


def test_server_bad_address_fails() -> None:
    assert check_server("no-port-here", None)[0].status == "fail"


def test_server_reachable_over_tcp(tcp_server: int) -> None:
    found = check_server(f"127.0.0.1:{tcp_server}", None, timeout=1.0)
    assert [f.status for f in found] == ["ok"]


def test_server_tls_handshake_verified(tls_server: int, creds: ServerCredentials) -> None:
    found = check_server(f"127.0.0.1:{tls_server}", creds.ca_cert, timeout=3.0)
    assert [(f.check, f.status) for f in found] == [("server", "ok"), ("tls", "ok")], found


def test_server_tls_with_wrong_ca_fails(tls_server: int, tmp_path: Path) -> None:
    other = create_server_credentials(tmp_path / "other", hosts=["127.0.0.1"])
    found = check_server(f"127.0.0.1:{tls_server}", other.ca_cert, timeout=3.0)
    assert found[-1].check == "tls" and found[-1].status == "fail"


def test_server_without_tls_fails_handshake(tcp_server: int, creds: ServerCredentials) -> None:
    found = check_server(f"127.0.0.1:{tcp_server}", creds.ca_cert, timeout=0.5)
    assert found[-1].check == "tls" and found[-1].status == "fail"


# ---------------------------------------------------------------- GPU
def test_gpu_found_and_cpu_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Test GPU")
    assert "Test GPU" in check_gpu(lambda: True).message
    cpu = check_gpu(lambda: False)
    assert cpu.status == "ok" and "CPU will be used" in cpu.message


# ---------------------------------------------------------------- ledger and delta
def _ledger_with_spend(state: Path, steps: int) -> float:
    ledger = PrivacyLedger.open(state / LEDGER_FILE, site=SITE)
    ledger.record(
        run="r",
        server_round=1,
        noise_multiplier=1.1,
        sample_rate=0.01,
        steps=steps,
        max_grad_norm=1.0,
    )
    return ledger.epsilon(delta=1e-5)


def test_ledger_new_is_ok_and_not_created(tmp_path: Path) -> None:
    state = tmp_path / "state"
    finding = check_ledger(state, site=SITE, budget_epsilon=3, budget_delta=1e-5)
    assert finding.status == "ok" and "no ledger yet" in finding.message
    assert not state.exists()  # the doctor is read-only


def test_ledger_budget_ok_warn_fail(tmp_path: Path) -> None:
    spent = _ledger_with_spend(tmp_path, steps=200)
    kwargs = {"site": SITE, "budget_delta": 1e-5}
    assert check_ledger(tmp_path, budget_epsilon=spent * 3, **kwargs).status == "ok"  # type: ignore[arg-type]
    low = check_ledger(tmp_path, budget_epsilon=spent * 1.05, **kwargs)  # type: ignore[arg-type]
    assert low.status == "warn" and "10%" in low.message
    none_left = check_ledger(tmp_path, budget_epsilon=spent * 0.9, **kwargs)  # type: ignore[arg-type]
    assert none_left.status == "fail" and "exhausted" in none_left.message


def test_ledger_corrupt_and_missing_with_anchor_fail(tmp_path: Path) -> None:
    _ledger_with_spend(tmp_path, steps=10)
    ledger = tmp_path / LEDGER_FILE
    ledger.write_text(ledger.read_text(encoding="utf-8").replace('"steps": 10', '"steps": 1'))
    corrupt = check_ledger(tmp_path, site=SITE, budget_epsilon=3, budget_delta=1e-5)
    assert corrupt.status == "fail" and "corrupt" in corrupt.message and "backup" in corrupt.fix
    ledger.unlink()
    missing = check_ledger(tmp_path, site=SITE, budget_epsilon=3, budget_delta=1e-5)
    assert missing.status == "fail" and "missing" in missing.message


def test_delta_against_rows() -> None:
    assert check_delta(1e-5, 50).status == "ok"
    assert check_delta(0.05, 50).status == "warn"
    assert check_delta(1e-5, None).status == "warn"


# ---------------------------------------------------------------- whole run and CLI
def test_run_doctor_ready_site(
    schema_file: Path,
    table_file: Path,
    creds: ServerCredentials,
    site_key: Path,
    tls_server: int,
    tmp_path: Path,
) -> None:
    findings = run_doctor(
        data=table_file,
        schema=schema_file,
        budget_epsilon=3.0,
        state_dir=tmp_path / "state",
        site_name=SITE,
        superlink=f"127.0.0.1:{tls_server}",
        ca=creds.ca_cert,
        key=site_key,
    )
    assert exit_code(findings) == 0, format_report(findings)
    checks = {f.check for f in findings}
    assert {
        "schema",
        "table",
        "delta",
        "ca",
        "site key",
        "server",
        "tls",
        "gpu",
        "ledger",
    } <= checks
    assert "ready to join" in format_report(findings)


def test_cli_exit_code_1_on_failure(
    schema_file: Path, table_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_doctor_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "doctor",
            "--data",
            str(table_file),
            "--schema",
            str(schema_file),
            "--budget-epsilon",
            "3",
            "--superlink",
            f"127.0.0.1:{_closed_port()}",
            "--timeout",
            "0.5",
        ]
    )
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "fix:" in out and "NOT ready" in out


def test_ledger_of_another_site_names_the_site_name_fix(tmp_path: Path) -> None:
    _ledger_with_spend(tmp_path, steps=10)
    finding = check_ledger(tmp_path, site="cohort", budget_epsilon=3, budget_delta=1e-5)
    assert finding.status == "fail" and f"belongs to site '{SITE}'" in finding.message
    assert "--site-name" in finding.fix and "backup" not in finding.fix


def test_ledger_finding_names_the_ledger_it_read(tmp_path: Path) -> None:
    _ledger_with_spend(tmp_path, steps=10)
    finding = check_ledger(tmp_path, site=SITE, budget_epsilon=3, budget_delta=1e-5)
    assert finding.status == "ok" and f"(ledger {tmp_path / LEDGER_FILE})" in finding.message
