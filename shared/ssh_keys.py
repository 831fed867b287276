"""Fingerprints of OpenSSH public keys, as ``ssh-keygen -lf KEY.pub`` prints them.

A hospital and the coordinator compare a site key's fingerprint out of band (by phone)
before the key is admitted. Printing it in OpenSSH's own format lets either side check
it with the standard tool, with no fedsynth installed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from shared.errors import ConfigError


def openssh_fingerprint(public_key: str) -> str:
    """``SHA256:<base64>`` of an OpenSSH public key line (``ssh-keygen -l``'s format).

    Parameters
    ----------
    public_key : str
        The ``.pub`` file's line, ``<type> <base64 blob> [comment]``.

    Raises
    ------
    ConfigError
        If the line holds no base64 key blob.
    """
    fields = public_key.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (IndexError, binascii.Error):
        raise ConfigError("not an OpenSSH public key line ('<type> <base64> [comment]')") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_key_line(private_key: bytes) -> str:
    """The OpenSSH public key line of an unencrypted OpenSSH private key (a site's ``.key``).

    Raises
    ------
    ConfigError
        If the bytes are not an unencrypted OpenSSH private key.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(private_key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"not an unencrypted OpenSSH private key ({exc})") from None
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line.decode()
