"""Secure aggregation settings, command-line defaults and the privacy report's account of it."""

from __future__ import annotations

from typing import Any

import pytest

from fedsynth.cli import build_parser
from server.report import build_report
from server.report_md import render_markdown
from shared.config import RunSettings
from shared.errors import ConfigError
from shared.secagg import SecAggAbortedError, required_threshold

BASE = {"schema-path": "s.json", "out-dir": "/tmp/out"}


def test_secure_aggregation_is_off_by_default_in_the_run_settings() -> None:
    s = RunSettings.from_run_config(BASE)
    assert (s.secure_aggregation, s.secagg_threshold, s.secagg_bits) == (False, 0, 24)


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [("secagg-threshold", 1, "a sum of one site"), ("secagg-bits", 60, "8..40")],
)
def test_bad_secagg_settings_are_refused(key: str, value: int, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        RunSettings.from_run_config({**BASE, key: value})


def test_server_defaults_to_secure_aggregation_and_simulate_does_not() -> None:
    parser = build_parser()
    server = parser.parse_args(["server", "--schema", "s.json", "--out", "o"])
    sim = parser.parse_args(["simulate"])
    sim_on = parser.parse_args(["simulate", "--secure-aggregation"])
    server_off = parser.parse_args(
        ["server", "--schema", "s.json", "--out", "o", "--no-secure-aggregation"]
    )

    assert server.secure_aggregation is True and server_off.secure_aggregation is False
    assert sim.secure_aggregation is False and sim_on.secure_aggregation is True


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 2), (4, 3), (5, 3), (10, 6)])
def test_default_threshold_is_a_strict_majority_of_at_least_two(n: int, t: int) -> None:
    assert required_threshold(n) == t


def test_one_site_cannot_aggregate_securely() -> None:
    with pytest.raises(SecAggAbortedError, match="at least 2 sites and only 1"):
        required_threshold(1)


def _report(secure: bool) -> dict[str, Any]:
    settings = RunSettings.from_run_config({**BASE, "secure-aggregation": secure})
    history = [
        {
            "round": 1,
            "seconds": 1.0,
            "trained": ["a", "b"],
            "declined": [],
            **(
                {"secure_aggregation": {"threshold": 2, "survivors": 2, "sites_sampled": 3}}
                if secure
                else {}
            ),
        }
    ]
    return build_report(settings, {}, 1, "dp-vae", 1.0, history)


def test_report_states_what_the_server_still_sees_under_secure_aggregation() -> None:
    report = _report(True)
    md = render_markdown(report)

    assert report["run"]["secure_aggregation"] is True
    assert report["secure_aggregation"]["threshold"].startswith("a strict majority")
    assert "masked-update" in report["sent_by_each_site"]
    assert "update" not in report["sent_by_each_site"]
    assert "What the server still sees" in md
    assert "round 1: a, b (2 survivor(s), threshold 2)" in md
    assert "cumulative ε" in md and "colludes with" in md


def test_report_says_when_secure_aggregation_was_off() -> None:
    report = _report(False)

    assert report["secure_aggregation"] == {"enabled": False}
    assert "Off for this run" in render_markdown(report)
    assert any("individual update" in g for g in report["not_protected"])
