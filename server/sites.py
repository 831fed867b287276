"""The coordinator's registry of admitted sites: name → public key.

``fedsynth server sites add|remove|list`` edits ``sites.json`` in the
coordinator's state folder; ``fedsynth server --state-dir DIR`` registers
exactly the listed keys with its SuperLink, and keeps following the file while
the run lasts (a removed site is unregistered from the running SuperLink).

The file is validated on every read (names, keys, no duplicate name or key, a
SHA-256 checksum over the content), written atomically (fsync + rename) under a
file lock, so concurrent edits cannot lose one another and a crash never leaves
a torn registry. A damaged registry is an error, never an empty list: an empty
list would silently admit nobody, a partial one the wrong sites.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.errors import SiteRegistryError
from shared.manifest import atomic_write_bytes
from shared.ssh_keys import openssh_fingerprint

REGISTRY_FILE = "sites.json"
REGISTRY_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Flower's SuperNode authentication accepts EC keys on NIST curves only.
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True)
class Site:
    """One admitted site.

    Attributes
    ----------
    name : str
        The site's name (also its SuperNode name at the SuperLink).
    public_key : str
        Its OpenSSH public key (one line), as ``fedsynth certs site`` writes it.
    fingerprint : str
        ``SHA256:`` fingerprint of the key, to compare out of band with the site.
    """

    name: str
    public_key: str
    fingerprint: str
    added_at: float


def key_fingerprint(text: str, *, source: str) -> str:
    """Validate an OpenSSH EC public key and return its SHA-256 fingerprint.

    Raises
    ------
    SiteRegistryError
        If ``text`` is not an EC public key on a NIST curve.
    """
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SiteRegistryError(
            f"{source} is not an OpenSSH public key ({exc}); send the site's .pub file "
            "made by `fedsynth certs site --name NAME --out DIR`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NIST_CURVES):
        raise SiteRegistryError(
            f"{source} is not an EC key on a NIST curve (P-256/384/521), which Flower's "
            "node authentication requires; create one with `fedsynth certs site`"
        )
    # The digest `fedsynth certs site` and `ssh-keygen -lf` print, to compare by phone.
    return openssh_fingerprint(text)


def legacy_fingerprint(text: str) -> str:
    """The hex SHA-256 of the key's DER form, which registries before 2026-11-23 stored."""
    key = serialization.load_ssh_public_key(text.strip().encode())
    raw = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def _current(site: Site) -> Site:
    """``site`` with its fingerprint in today's format if it was stored in the old one.

    The registry's checksum has already vouched for the entry; the next write stores
    the new format.
    """
    try:
        if site.fingerprint == legacy_fingerprint(site.public_key):
            return replace(site, fingerprint=key_fingerprint(site.public_key, source=site.name))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass  # _check reports the bad key
    return site


def _checksum(sites: list[dict[str, Any]]) -> str:
    return hashlib.sha256(
        json.dumps(sites, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class SiteRegistry:
    """The registry file ``sites.json`` in the coordinator's state folder."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / REGISTRY_FILE

    def sites(self) -> list[Site]:
        """The admitted sites, sorted by name (empty when no registry exists yet).

        Raises
        ------
        SiteRegistryError
            If the file is damaged or holds an invalid entry.
        """
        if not self.path.exists():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            raw = list(doc["sites"])
            if doc.get("fedsynth_sites_version") != REGISTRY_VERSION:
                raise ValueError("not a fedsynth site registry of version 1")
            if doc.get("checksum") != _checksum(raw):
                raise ValueError("checksum mismatch: the file was edited or damaged")
            sites = [_current(Site(**entry)) for entry in raw]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise SiteRegistryError(
                f"site registry {self.path} is damaged ({exc}); restore it from backup or "
                "rebuild it with `fedsynth server sites add NAME --key NAME.pub --state-dir DIR` (never hand-edit it)"
            ) from None
        self._check(sites)
        return sorted(sites, key=lambda s: s.name)

    def _check(self, sites: list[Site]) -> None:
        names: set[str] = set()
        prints: set[str] = set()
        for site in sites:
            if not NAME_PATTERN.match(site.name) or site.name in names:
                raise SiteRegistryError(
                    f"site registry {self.path} has an invalid or repeated name {site.name!r}; "
                    "restore it from backup"
                )
            if key_fingerprint(site.public_key, source=f"the key of {site.name}") != (
                site.fingerprint
            ) or (site.fingerprint in prints):
                raise SiteRegistryError(
                    f"site registry {self.path}: the key of {site.name!r} does not match its "
                    "fingerprint or is repeated; restore the registry from backup"
                )
            names.add(site.name)
            prints.add(site.fingerprint)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Site]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(REGISTRY_FILE + ".lock"), "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield self.sites()
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write(self, sites: list[Site]) -> None:
        raw = [asdict(s) for s in sorted(sites, key=lambda s: s.name)]
        doc = {"fedsynth_sites_version": REGISTRY_VERSION, "sites": raw, "checksum": _checksum(raw)}
        atomic_write_bytes(self.path, json.dumps(doc, indent=1).encode())

    def add(self, name: str, key_file: str | Path) -> Site:
        """Admit site ``name`` with the OpenSSH public key in ``key_file``.

        Raises
        ------
        SiteRegistryError
            If the name is invalid or taken, the key is invalid, or the key is
            already registered (under any name).
        """
        if not NAME_PATTERN.match(name):
            raise SiteRegistryError(
                f"site name {name!r} is invalid: use 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        path = Path(key_file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteRegistryError(f"cannot read the key file {path} ({exc})") from None
        fingerprint = key_fingerprint(text, source=str(path))
        with self._locked() as sites:
            for other in sites:
                if other.name == name:
                    raise SiteRegistryError(
                        f"site {name!r} is already registered ({other.fingerprint}); "
                        f"`fedsynth server sites remove {name} --state-dir DIR` first to replace its key"
                    )
                if other.fingerprint == fingerprint:
                    raise SiteRegistryError(
                        f"the key {path} is already registered as site {other.name!r}: each "
                        "site needs its own key (`fedsynth certs site --name NAME`)"
                    )
            site = Site(name, text, fingerprint, time.time())
            self._write([*sites, site])
        return site

    def remove(self, name: str) -> Site:
        """Remove site ``name``; a running ``fedsynth server`` unregisters it too.

        Raises
        ------
        SiteRegistryError
            If no such site is registered.
        """
        with self._locked() as sites:
            kept = [s for s in sites if s.name != name]
            if len(kept) == len(sites):
                known = ", ".join(s.name for s in sites) or "none"
                raise SiteRegistryError(
                    f"no site named {name!r} is registered (registered: {known}); see "
                    "`fedsynth server sites list`"
                )
            self._write(kept)
        return next(s for s in sites if s.name == name)
