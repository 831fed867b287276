"""The site's durable privacy ledger: the single source of truth for its spend.

Every DP-SGD step a site has ever run for the consortium is recorded as
``(σ, q, steps)``; the site's ε is always the composition of the *whole*
history (see :func:`shared.accounting.epsilon_of`), never a per-round figure,
and never from a fresh accountant.

Durability and fail-closed rules
--------------------------------
* Writes go to a temporary file, are fsynced, atomically renamed over the
  ledger, and the folder is fsynced: a crash leaves the old or the new ledger,
  never a torn one.
* The document carries a SHA-256 checksum; a mismatch or unparsable file is a
  :class:`LedgerError`, never a silent reset.
* An *anchor* file beside the ledger remembers how many entries it held. A
  ledger that disappears, or comes back shorter (restored from an old backup),
  while the anchor exists is refused.
* Check, train and record happen under an exclusive file lock, so two runs at
  one site cannot both pass the budget check.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client.errors import BudgetExhaustedError, LedgerError, LedgerSiteMismatchError
from shared.accounting import ACCOUNTANTS, Mechanism, epsilon_of
from shared.errors import AccountingError, FedsynthError

LEDGER_VERSION = 1
log = logging.getLogger("fedsynth.client")


@dataclass(frozen=True)
class LedgerEntry:
    """One round of local DP-SGD at this site.

    Attributes
    ----------
    noise_multiplier : float
        σ of the round (noise std / clip norm C).
    sample_rate : float
        Poisson rate q.
    steps : int
        DP-SGD steps actually run (empty Poisson batches included).
    """

    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    recorded_at: float


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def anchor_path_for(ledger_path: Path) -> Path:
    """The anchor sidecar of a ledger file (entry count; detects deletion and rollback)."""
    return ledger_path.with_name(ledger_path.name + ".anchor")


def never_recorded(ledger_path: Path) -> bool:
    """No ledger and no anchor: this folder has never recorded a release (read-only)."""
    return not ledger_path.exists() and not anchor_path_for(ledger_path).exists()


class PrivacyLedger:
    """Cumulative privacy spend of one site.

    Use :meth:`open`; do not construct directly.
    """

    def __init__(self, path: Path, site: str, accountant: str, entries: list[LedgerEntry]) -> None:
        self.path, self.site, self.accountant = path, site, accountant
        self.entries = entries

    # ------------------------------------------------------------------ loading
    @property
    def anchor_path(self) -> Path:
        """Sidecar that remembers the entry count (rollback and deletion detection)."""
        return anchor_path_for(self.path)

    @classmethod
    def open(cls, path: str | Path, *, site: str, accountant: str = "rdp") -> PrivacyLedger:
        """Load the ledger at ``path``, or start an empty one for a site that never trained.

        Raises
        ------
        LedgerError
            If the ledger is corrupt, was rolled back, or is missing although
            its anchor shows the site has trained before.
        """
        p = Path(path)
        if accountant not in ACCOUNTANTS:
            raise LedgerError(f"unknown accountant {accountant!r}; use one of {list(ACCOUNTANTS)}")
        ledger = cls(p, site, accountant, [])
        anchor = ledger._read_anchor()
        if not p.exists():
            if anchor is not None:
                raise LedgerError(
                    f"privacy ledger {p} is missing, but {ledger.anchor_path.name} shows this site "
                    f"recorded {anchor} round(s) before. Training is stopped so the site cannot "
                    "under-report its spend: restore the ledger from backup (never delete it)."
                )
            p.parent.mkdir(parents=True, exist_ok=True)
            log.warning("starting a new privacy ledger for site %r at %s", site, p)
            return ledger
        ledger._load()
        if anchor is not None and len(ledger.entries) < anchor:
            raise LedgerError(
                f"privacy ledger {p} holds {len(ledger.entries)} round(s) but its anchor recorded "
                f"{anchor}: it was rolled back or replaced by an old copy. Restore the newest "
                "ledger; training is stopped until then."
            )
        return ledger

    def _read_anchor(self) -> int | None:
        try:
            doc = json.loads(self.anchor_path.read_text(encoding="utf-8"))
            return int(doc["entries"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise LedgerError(
                f"ledger anchor {self.anchor_path} is unreadable ({exc}); restore it from backup"
            ) from None

    def _corrupt(self, why: str) -> LedgerError:
        return LedgerError(
            f"privacy ledger {self.path} is corrupt ({why}). Training is stopped so the site "
            "cannot under-report its spend: restore the ledger from backup; never delete or "
            "hand-edit it."
        )

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(f"unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("fedsynth_ledger_version") != LEDGER_VERSION:
            raise self._corrupt("not a fedsynth ledger of version 1")
        body = {k: v for k, v in doc.items() if k != "checksum"}
        if doc.get("checksum") != _checksum(body):
            raise self._corrupt("checksum mismatch: the file was modified or damaged")
        try:
            entries = [LedgerEntry(**e) for e in doc["entries"]]
            self.accountant = str(doc["accountant"])
            stored_site = str(doc["site"])
            for e in entries:
                epsilon_of(
                    [(e.noise_multiplier, e.sample_rate, e.steps)],
                    delta=0.5,
                    accountant=self.accountant,
                )
        except (KeyError, TypeError, AccountingError) as exc:
            raise self._corrupt(f"bad entry: {exc}") from None
        if stored_site != self.site:
            raise LedgerSiteMismatchError(
                f"privacy ledger {self.path} belongs to site {stored_site!r}, not {self.site!r}. "
                f"If this is that site's ledger, pass --site-name {stored_site} (the name "
                "defaults to the data file's stem); otherwise point --state-dir at this "
                "site's own ledger folder"
            )
        self.entries = entries

    # ---------------------------------------------------------------- accounting
    @property
    def history(self) -> list[Mechanism]:
        """All recorded mechanisms as ``(σ, q, steps)``."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries]

    @property
    def total_steps(self) -> int:
        """DP-SGD steps over all rounds and runs."""
        return sum(e.steps for e in self.entries)

    def epsilon(self, *, delta: float) -> float:
        """Cumulative ε at ``delta`` over everything ever recorded."""
        return epsilon_of(self.history, delta=delta, accountant=self.accountant)

    def projected_epsilon(
        self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """Cumulative ε if ``steps`` more steps at (σ, q) were run now."""
        return epsilon_of(
            [*self.history, (noise_multiplier, sample_rate, steps)],
            delta=delta,
            accountant=self.accountant,
        )

    def check_budget(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        budget_epsilon: float,
        delta: float,
    ) -> float:
        """Refuse steps that would take the cumulative ε past ``budget_epsilon``.

        Returns
        -------
        float
            The projected cumulative ε after the steps.

        Raises
        ------
        BudgetExhaustedError
            Naming spent, projected and total ε.
        """
        projected = self.projected_epsilon(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta
        )
        if projected > budget_epsilon:
            spent = self.epsilon(delta=delta)
            raise BudgetExhaustedError(
                f"site {self.site!r} declines: {steps} more steps at σ={noise_multiplier:.4g}, "
                f"q={sample_rate:.4g} would raise its cumulative ε from {spent:.4f} to "
                f"{projected:.4f}, above its total budget ε={budget_epsilon:g} (δ={delta:g}). "
                "Nothing was trained or sent. Raise the site's budget only if its data "
                "steward agrees, or run with fewer steps or more noise."
            )
        return projected

    # ------------------------------------------------------------------ writing
    def record(
        self,
        *,
        run: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        max_grad_norm: float,
    ) -> None:
        """Append one round durably (ledger first, then anchor). Call before replying."""
        entry = LedgerEntry(
            run,
            server_round,
            float(noise_multiplier),
            float(sample_rate),
            int(steps),
            float(max_grad_norm),
            time.time(),
        )
        entries = [*self.entries, entry]
        body = {
            "fedsynth_ledger_version": LEDGER_VERSION,
            "site": self.site,
            "accountant": self.accountant,
            "entries": [asdict(e) for e in entries],
        }
        _write_durably(self.path, json.dumps({**body, "checksum": _checksum(body)}, indent=1))
        self.entries = entries
        _write_durably(self.anchor_path, json.dumps({"entries": len(entries)}))

    @contextlib.contextmanager
    def locked(self) -> Iterator[PrivacyLedger]:
        """Hold an exclusive lock on the ledger, re-reading it once the lock is held."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield PrivacyLedger.open(self.path, site=self.site, accountant=self.accountant)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ledger_standing(ledger_path: Path, *, site: str, delta: float) -> tuple[float, int]:
    """(cumulative ε, total steps) to report when a site declines, read from its ledger.

    ``(0.0, 0)`` when the ledger cannot be read (the decline says so); the coordinator
    then keeps the last figures it had for the site and never lowers them.
    """
    try:
        ledger = PrivacyLedger.open(ledger_path, site=site)
        return ledger.epsilon(delta=delta), ledger.total_steps
    except FedsynthError:
        return 0.0, 0
