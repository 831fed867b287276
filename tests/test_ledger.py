"""Unit tests for :mod:`client.ledger`: the durable, fail-closed privacy ledger."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import BudgetExhaustedError, LedgerError
from client.ledger import PrivacyLedger
from shared.accounting import epsilon_of

DELTA = 1e-5
SITE = "st-marys"
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


def _record(
    ledger: PrivacyLedger,
    server_round: int,
    *,
    sigma: float = 1.1,
    q: float = 0.01,
    steps: int = 100,
) -> None:
    ledger.record(
        run="run-1",
        server_round=server_round,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        max_grad_norm=1.0,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "privacy_ledger.json"


@pytest.fixture
def two_rounds(path: Path) -> PrivacyLedger:
    """A ledger with two recorded rounds of different mechanisms."""
    ledger = PrivacyLedger.open(path, site=SITE)
    _record(ledger, 1)
    _record(ledger, 2, sigma=0.9, q=0.02, steps=30)
    return ledger


# ----------------------------------------------------------------- new and reload
def test_new_ledger_starts_empty(path: Path) -> None:
    # Execute
    ledger = PrivacyLedger.open(path, site=SITE)

    # Assert
    assert ledger.entries == [] and ledger.total_steps == 0
    assert ledger.epsilon(delta=DELTA) == 0.0
    assert not path.exists() and path.parent.is_dir()


def test_record_writes_ledger_and_anchor(two_rounds: PrivacyLedger, path: Path) -> None:
    # Execute
    doc = json.loads(path.read_text())

    # Assert
    assert doc["site"] == SITE and doc["accountant"] == "rdp"
    assert [e["steps"] for e in doc["entries"]] == [100, 30]
    assert json.loads(two_rounds.anchor_path.read_text()) == {"entries": 2}
    assert two_rounds.anchor_path == path.with_name("privacy_ledger.json.anchor")


def test_reopen_gives_same_entries_and_epsilon(two_rounds: PrivacyLedger, path: Path) -> None:
    # Execute
    reopened = PrivacyLedger.open(path, site=SITE)

    # Assert
    assert reopened.entries == two_rounds.entries
    assert reopened.history == [(1.1, 0.01, 100), (0.9, 0.02, 30)]
    assert reopened.total_steps == 130
    assert reopened.epsilon(delta=DELTA) == epsilon_of(reopened.history, delta=DELTA)
    assert reopened.epsilon(delta=DELTA) > epsilon_of([(1.1, 0.01, 100)], delta=DELTA)


def test_unknown_accountant_is_refused(path: Path) -> None:
    with pytest.raises(LedgerError, match="unknown accountant 'moments'"):
        PrivacyLedger.open(path, site=SITE, accountant="moments")


# ------------------------------------------------------------------------ budget
def test_check_budget_returns_projection(two_rounds: PrivacyLedger) -> None:
    # Prepare
    expected = epsilon_of([*two_rounds.history, (1.1, 0.01, 50)], delta=DELTA)

    # Execute
    projected = two_rounds.check_budget(
        noise_multiplier=1.1, sample_rate=0.01, steps=50, budget_epsilon=100.0, delta=DELTA
    )

    # Assert
    assert projected == expected


def test_check_budget_declines_and_writes_nothing(two_rounds: PrivacyLedger, path: Path) -> None:
    # Prepare
    before = path.read_bytes(), two_rounds.anchor_path.read_bytes()
    spent = two_rounds.epsilon(delta=DELTA)

    # Execute
    with pytest.raises(BudgetExhaustedError, match=rf"site '{SITE}' declines: 1000 more steps"):
        two_rounds.check_budget(
            noise_multiplier=1.1,
            sample_rate=0.01,
            steps=1000,
            budget_epsilon=spent + 0.01,
            delta=DELTA,
        )

    # Assert
    assert (path.read_bytes(), two_rounds.anchor_path.read_bytes()) == before
    assert len(two_rounds.entries) == 2


def test_check_budget_allows_landing_exactly_on_budget(two_rounds: PrivacyLedger) -> None:
    # Prepare
    budget = two_rounds.projected_epsilon(
        noise_multiplier=2.0, sample_rate=0.01, steps=10, delta=DELTA
    )

    # Execute / Assert
    assert (
        two_rounds.check_budget(
            noise_multiplier=2.0, sample_rate=0.01, steps=10, budget_epsilon=budget, delta=DELTA
        )
        == budget
    )


# ------------------------------------------------------------------- fail closed
def test_garbage_bytes_are_corrupt(two_rounds: PrivacyLedger, path: Path) -> None:
    # Prepare
    path.write_bytes(b"\x00\xff\xfe not json")

    # Execute / Assert
    with pytest.raises(LedgerError, match=r"is corrupt \(unreadable"):
        PrivacyLedger.open(path, site=SITE)


def test_edited_steps_without_checksum_are_corrupt(two_rounds: PrivacyLedger, path: Path) -> None:
    # Prepare: under-report the first round.
    doc = json.loads(path.read_text())
    doc["entries"][0]["steps"] = 1
    path.write_text(json.dumps(doc))

    # Execute / Assert
    with pytest.raises(LedgerError, match=r"is corrupt \(checksum mismatch"):
        PrivacyLedger.open(path, site=SITE)


def test_wrong_version_is_corrupt(two_rounds: PrivacyLedger, path: Path) -> None:
    # Prepare
    path.write_text(json.dumps({"fedsynth_ledger_version": 2, "entries": []}))

    # Execute / Assert
    with pytest.raises(LedgerError, match="is corrupt \\(not a fedsynth ledger of version 1\\)"):
        PrivacyLedger.open(path, site=SITE)


def test_deleted_ledger_with_anchor_is_missing(two_rounds: PrivacyLedger, path: Path) -> None:
    # Prepare
    path.unlink()

    # Execute / Assert
    with pytest.raises(LedgerError, match=r"is missing, but .*recorded 2 round\(s\) before"):
        PrivacyLedger.open(path, site=SITE)


def test_older_copy_is_rolled_back(path: Path) -> None:
    # Prepare
    ledger = PrivacyLedger.open(path, site=SITE)
    _record(ledger, 1)
    backup = path.with_name("backup.json")
    shutil.copy(path, backup)
    _record(ledger, 2)
    shutil.copy(backup, path)

    # Execute / Assert
    with pytest.raises(
        LedgerError,
        match=r"holds 1 round\(s\) but its anchor recorded 2: it was "
        "rolled back",
    ):
        PrivacyLedger.open(path, site=SITE)


def test_unreadable_anchor_is_refused(two_rounds: PrivacyLedger, path: Path) -> None:
    # Prepare
    two_rounds.anchor_path.write_text("[]")

    # Execute / Assert
    with pytest.raises(LedgerError, match=r"ledger anchor .* is unreadable"):
        PrivacyLedger.open(path, site=SITE)


def test_ledger_of_another_site_is_refused(two_rounds: PrivacyLedger, path: Path) -> None:
    with pytest.raises(LedgerError, match=rf"belongs to site '{SITE}', not 'other-site'"):
        PrivacyLedger.open(path, site="other-site")


# ------------------------------------------------------------------------ locking
def test_locked_yields_a_fresh_view(path: Path) -> None:
    # Prepare: a stale handle, then another process records a round.
    stale = PrivacyLedger.open(path, site=SITE)
    _record(PrivacyLedger.open(path, site=SITE), 1)

    # Execute
    with stale.locked() as fresh:
        entries = list(fresh.entries)
        _record(fresh, 2)

    # Assert
    assert stale.entries == [] and len(entries) == 1
    assert [e.round for e in PrivacyLedger.open(path, site=SITE).entries] == [1, 2]
    assert path.with_name("privacy_ledger.json.lock").exists()


# --------------------------------------------------------------------- hypothesis
_MECHANISM = st.tuples(st.floats(0.5, 10.0), st.floats(1e-3, 0.05), st.integers(0, 2000))


@settings(max_examples=8, deadline=None)
@given(st.lists(_MECHANISM, min_size=1, max_size=4))
def test_epsilon_never_decreases_as_rounds_are_recorded(
    mechanisms: list[tuple[float, float, int]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        # Prepare
        ledger = PrivacyLedger.open(Path(folder) / "ledger.json", site=SITE)
        seen = [ledger.epsilon(delta=DELTA)]

        # Execute
        for i, (sigma, q, steps) in enumerate(mechanisms, start=1):
            _record(ledger, i, sigma=sigma, q=q, steps=steps)
            seen.append(ledger.epsilon(delta=DELTA))

        # Assert
        assert all(b >= a for a, b in itertools.pairwise(seen))
        reopened = PrivacyLedger.open(Path(folder) / "ledger.json", site=SITE)
        assert reopened.epsilon(delta=DELTA) == seen[-1]
