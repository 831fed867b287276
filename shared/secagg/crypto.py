"""Cryptographic building blocks of secure aggregation, on the ``cryptography`` package.

* X25519 key agreement, with HKDF-SHA256 to derive independent keys per purpose;
* a pseudo-random generator: the ChaCha20 keystream under a 32-byte seed;
* AES-256-GCM authenticated encryption (so the relaying server can neither read
  nor alter a share);
* Shamir secret sharing (Shamir 1979) over the prime field GF(2**521 - 1), large
  enough to hold a 32-byte secret in one field element.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.secagg.errors import SecAggAbortedError, SecAggProtocolError

PRIME = (1 << 521) - 1  # a Mersenne prime
SECRET_BYTES = 32
_SHARE_BYTES = 66  # one element of GF(2**521 - 1)
_NONCE = 12


def new_private_key() -> bytes:
    """A fresh X25519 private key (raw 32 bytes) from the OS's secret randomness."""
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_key(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of ``private``."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def agree(private: bytes, peer_public: bytes, *, purpose: bytes) -> bytes:
    """32-byte key shared by two parties: HKDF(X25519(private, peer_public), purpose).

    Both ends compute the same value; distinct ``purpose`` strings give
    independent keys from one key pair.
    """
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        shared = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as exc:
        raise SecAggProtocolError(f"invalid X25519 public key: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(shared)


def prg(seed: bytes, length: int, *, modulus_bits: int) -> npt.NDArray[np.uint64]:
    """``length`` pseudo-random integers uniform in ``[0, 2**modulus_bits)`` from ``seed``.

    The ChaCha20 keystream (zero nonce: each seed is used for one stream only).
    """
    if len(seed) != SECRET_BYTES:
        raise ValueError(f"a PRG seed must be {SECRET_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    return words & np.uint64((1 << modulus_bits) - 1)


def encrypt(key: bytes, plaintext: bytes, *, context: bytes) -> bytes:
    """AES-256-GCM; ``context`` is authenticated (not encrypted). Returns nonce ‖ ciphertext."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def decrypt(key: bytes, blob: bytes, *, context: bytes) -> bytes:
    """Inverse of :func:`encrypt`.

    Raises
    ------
    SecAggProtocolError
        If the ciphertext or its context was altered, or the key is wrong.
    """
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], context)
    except (InvalidTag, ValueError) as exc:
        raise SecAggProtocolError(
            "a relayed share failed authentication (altered in transit or the wrong key)"
        ) from exc


def split_secret(secret: bytes, *, threshold: int, holders: list[int]) -> dict[int, bytes]:
    """Shamir shares of ``secret``: any ``threshold`` of them rebuild it, fewer reveal nothing.

    Parameters
    ----------
    secret : bytes
        Exactly 32 bytes (a key or a PRG seed).
    threshold : int
        Shares needed to rebuild (degree of the polynomial + 1).
    holders : list of int
        Distinct positive x-coordinates, one per share holder.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(holders) or len(set(holders)) != len(holders):
        raise ValueError(
            f"threshold {threshold} needs 1 <= threshold <= {len(holders)} distinct holders"
        )
    if min(holders) < 1:
        raise ValueError("share holders must have positive x-coordinates")
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares: dict[int, bytes] = {}
    for x in holders:
        y = 0
        for c in reversed(coeffs):  # Horner's rule
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(_SHARE_BYTES, "big")
    return shares


def combine_shares(shares: dict[int, bytes], *, threshold: int) -> bytes:
    """The 32-byte secret from ``threshold`` or more shares (Lagrange interpolation at 0).

    Raises
    ------
    SecAggAbortedError
        If fewer than ``threshold`` shares are given.
    """
    if len(shares) < threshold:
        raise SecAggAbortedError(
            f"only {len(shares)} share(s) of a secret, fewer than the threshold {threshold}"
        )
    points = [(x, int.from_bytes(y, "big")) for x, y in sorted(shares.items())[:threshold]]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise SecAggProtocolError("shares do not rebuild a valid secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
