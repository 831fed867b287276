"""The aggregation settings: validation, defaults, and what reaches the sites."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from shared.cli_options import add_aggregation_options, aggregation_overrides
from shared.config import AggregationSettings, RunSettings, TrainSettings
from shared.errors import ConfigError

BASE: dict[str, Any] = {"schema-path": "/s.json", "out-dir": "/out"}


def _train(run: RunSettings) -> TrainSettings:
    return run.train_settings(1, noise_multiplier=1.0, schema_fingerprint="f")


def test_default_is_fedavg_and_sites_get_no_proximal_term() -> None:
    s = RunSettings.from_run_config(BASE)

    assert s.aggregation.aggregation == "fedavg"
    assert s.aggregation.learning_rate == 1.0
    assert _train(s).proximal_mu == 0.0


def test_fedprox_sends_mu_to_the_sites_and_others_do_not() -> None:
    prox = RunSettings.from_run_config({**BASE, "aggregation": "fedprox", "proximal-mu": 0.5})
    adam = RunSettings.from_run_config({**BASE, "aggregation": "fedadam", "proximal-mu": 0.5})

    assert TrainSettings.from_config(_train(prox).to_config()).proximal_mu == 0.5
    assert _train(adam).proximal_mu == 0.0


def test_a_train_config_without_mu_means_no_proximal_term() -> None:
    cfg = _train(RunSettings.from_run_config(BASE)).to_config()
    del cfg["proximal-mu"]

    assert TrainSettings.from_config(cfg).proximal_mu == 0.0


def test_server_learning_rate_zero_takes_the_aggregations_default() -> None:
    assert AggregationSettings(aggregation="fedadam").learning_rate == 0.01
    assert AggregationSettings(aggregation="fedadam", server_learning_rate=0.2).learning_rate == 0.2


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("aggregation", "fedyogi", r"'aggregation' = 'fedyogi' is invalid: must be one of"),
        ("server-momentum", 1.0, r"'server-momentum' = 1.0 is invalid: must be in \[0, 1\)"),
        ("server-beta2", -0.1, r"'server-beta2' = -0.1 is invalid"),
        ("server-tau", 0.0, r"'server-tau' = 0.0 is invalid: must be > 0"),
        ("proximal-mu", -1.0, r"'proximal-mu' = -1.0 is invalid: must be >= 0"),
        ("server-learning-rate", -0.5, r"'server-learning-rate' = -0.5 is invalid"),
    ],
)
def test_bad_aggregation_settings_are_refused_naming_the_key(
    key: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        RunSettings.from_run_config({**BASE, key: value})


def test_cli_options_become_validated_run_config_keys() -> None:
    p = argparse.ArgumentParser()
    add_aggregation_options(p)
    args = p.parse_args(["--aggregation", "fedavgm", "--server-momentum", "0.5"])

    s = RunSettings.from_run_config({**BASE, **aggregation_overrides(args)})

    assert (s.aggregation.aggregation, s.aggregation.server_momentum) == ("fedavgm", 0.5)
    assert s.as_dict()["aggregation"]["aggregation"] == "fedavgm"  # part of the run identity
