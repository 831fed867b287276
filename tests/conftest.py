"""Shared fixtures for the unit tests.

The project is not installed into the virtual environment, so the repository
root is put on ``sys.path`` here; tests import ``shared`` and ``client`` directly.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.cohort import cohort_schema  # noqa: E402
from shared.schema import Schema  # noqa: E402

SMALL_SCHEMA_DOC: dict[str, Any] = {
    "fedsynth_schema_version": 1,
    "name": "small",
    "columns": [
        {"name": "age", "type": "integer", "min": 18, "max": 95},
        {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
        {"name": "bmi", "type": "continuous", "min": 15, "max": 60, "nullable": True},
    ],
}


@pytest.fixture
def _task_identity() -> Iterator[None]:
    """The identity Flower sets in a real ClientApp process."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 3
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None  # type: ignore[assignment]


@pytest.fixture
def _no_plan_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the run's plan check (:mod:`server.plan`), to reach a stage's own budget check.

    That check still decides when a ledger changes between the plan and the stage
    (another run at the same site); the plan check has its own tests.
    """
    import server.app
    import server.release_stages

    for module in (server.app, server.release_stages):
        monkeypatch.setattr(module, "check_plan", lambda *_args, **_kwargs: [])


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> Any:
    """Opacus and the ledger log warnings on purpose; keep test output readable."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture
def small_schema_doc() -> dict[str, Any]:
    """A fresh copy of the small schema's JSON document (safe to edit)."""
    return copy.deepcopy(SMALL_SCHEMA_DOC)


@pytest.fixture
def small_schema() -> Schema:
    """Three columns: a non-nullable integer, a categorical, a nullable continuous."""
    return Schema.from_dict(SMALL_SCHEMA_DOC)


@pytest.fixture(scope="session")
def cohort() -> Schema:
    """The built-in cohort's public schema."""
    return cohort_schema()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the fuzz counts of a test to its report (they travel back from workers)."""
    outcome = yield
    if call.when == "call":
        from tests.fuzzing import drain

        report = outcome.get_result()
        for target, (generated, accepted) in drain().items():
            report.user_properties.append(("fuzz", (target, generated, accepted)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many hostile inputs the fuzz tests generated (none: print nothing)."""
    generated: Counter[str] = Counter()
    accepted = 0
    for key in ("passed", "failed"):
        for report in terminalreporter.stats.get(key, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "fuzz":
                    target, n, ok = value
                    generated[target] += n
                    accepted += ok
    if generated:
        total = sum(generated.values())
        parts = ", ".join(f"{n} {target}" for target, n in sorted(generated.items()))
        terminalreporter.write_line(
            f"fuzzing: {total} generated hostile inputs ({parts}): {total - accepted} refused "
            f"with a fedsynth error, {accepted} turned out valid (any other exception fails "
            "its test)"
        )
