"""``fedsynth client``: how the SuperNode's output is read to explain a refused connection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from client.deploy import _Relay


def relay_of(text: str) -> _Relay:
    proc = subprocess.Popen(
        [sys.executable, "-c", f"print({text!r})"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    relay = _Relay(proc)
    proc.wait(timeout=30)
    relay.finish()
    return relay


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "ERROR : Exit Code: 305\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
            (True, True, False),
        ),
        ("ERROR : Exit Code: 305\nFailed to activate SuperNode", (True, False, False)),
        ("WARNING : Connection attempt failed, retrying in 1.2 seconds", (False, False, False)),
        (
            "INFO : SuperNode ID: 1234\nINFO : SuperNode terminated gracefully.",
            (False, False, True),
        ),
    ],
)
def test_relay_tells_a_foreign_certificate_an_unregistered_key_and_a_lost_coordinator(
    line: str, expected: tuple[bool, bool, bool]
) -> None:
    relay = relay_of(line)

    assert (relay.refused, relay.untrusted, relay.connected) == expected
