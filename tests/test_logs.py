"""Each log line is printed once, and a SIGTERM stops fedsynth with one clear line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from fedsynth import cli
from shared.logs import setup_logging


@pytest.fixture(autouse=True)
def _logging_on() -> Iterator[None]:
    """These tests read log output: lift the suite's ``logging.disable`` for their length."""
    before = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    yield
    logging.disable(before)


def test_flower_and_fedsynth_records_skip_a_root_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What `import opacus` does in the ServerApp and ClientApp processes (basicConfig).
    root_out = io.StringIO()
    root_handler = logging.StreamHandler(root_out)
    logging.getLogger().addHandler(root_handler)
    monkeypatch.setattr(logging.getLogger("flwr"), "propagate", True)
    try:
        setup_logging()
        logging.getLogger("flwr").info("configure_train: Sampled 2 nodes")
        logging.getLogger("fedsynth.server").info("round 1/1 done")
    finally:
        logging.getLogger().removeHandler(root_handler)

    # Flower's own console handler and fedsynth's handler print them; root never does.
    assert root_out.getvalue() == ""


def test_sigterm_logs_one_line_and_ignores_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_stopping", False)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    cli.log.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as exc:
            cli._terminate(15, None)
        cli._terminate(15, None)  # a second SIGTERM during clean-up does not abort it
    finally:
        cli.log.removeHandler(handler)

    assert exc.value.code == 143
    assert out.getvalue().splitlines() == ["stopping: received SIGTERM"]
