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
    ("line", "refused", "untrusted"),
    [
        (
            "ERROR : Exit Code: 305\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
            True,
            True,
        ),
        ("ERROR : Exit Code: 305\nFailed to activate SuperNode", True, False),
        ("WARNING : Connection attempt failed, retrying in 1.2 seconds", False, False),
    ],
)
def test_relay_tells_a_foreign_certificate_from_an_unregistered_key(
    line: str, refused: bool, untrusted: bool
) -> None:
    relay = relay_of(line)

    assert (relay.refused, relay.untrusted) == (refused, untrusted)
