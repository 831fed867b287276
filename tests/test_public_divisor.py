"""A site's DP-SGD step divides its noisy gradient sum by a public number, never q·n.

A site's row count n is private. Dividing the noisy sum by round(q·n) is not
post-processing of the Gaussian mechanism, and under FedProx the size of the update
then hinted at n. The divisor is the public ``expected-batch`` the server sends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.training import train_dp
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings, RunSettings, TrainSettings
from shared.config_site import NOMINAL_SITE_ROWS
from shared.errors import ConfigError
from shared.models import build_generator
from shared.tables import validate_frame
from tests.test_fedprox import site_round

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "shared" / "data" / "cohort_schema.json"


@pytest.fixture(scope="module")
def frame() -> object:
    raw = generate_cohort(300, seed=4)
    return validate_frame(raw.astype(object).where(raw.notna(), None), cohort_schema())


def _first_step_grads(
    rows: torch.Tensor, *, expected_batch: float | None, clipping: str
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    family = build_generator(cohort_schema(), ModelSettings())
    seen: list[dict[str, torch.Tensor]] = []

    def observe(module: torch.nn.Module) -> None:
        if not seen:
            seen.append({n: p.grad.clone() for n, p in module.named_parameters()})

    train_dp(
        family,
        rows,
        steps=1,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        learning_rate=0.01,
        device=torch.device("cpu"),
        seed=3,
        clipping=clipping,
        on_step=observe,
        expected_batch=expected_batch,
    )
    return seen[0]


@pytest.mark.parametrize("clipping", ["fused", "ghost"])
def test_the_released_gradient_is_the_noisy_sum_over_the_given_divisor(
    frame: object, clipping: str
) -> None:
    # Prepare
    rows = torch.from_numpy(build_generator(cohort_schema(), ModelSettings()).encode(frame))

    # Execute: the same batch and noise, divided by 30 (= q·n here) and by 120.
    own = _first_step_grads(rows, expected_batch=None, clipping=clipping)
    thirty = _first_step_grads(rows, expected_batch=30.0, clipping=clipping)
    public = _first_step_grads(rows, expected_batch=120.0, clipping=clipping)

    # Assert
    for name, grad in thirty.items():
        torch.testing.assert_close(own[name], grad)
        torch.testing.assert_close(public[name] * 4.0, grad, rtol=1e-5, atol=1e-7)


def test_a_nonpositive_divisor_is_refused(frame: object) -> None:
    rows = torch.from_numpy(build_generator(cohort_schema(), ModelSettings()).encode(frame))
    with pytest.raises(Exception, match="expected_batch must be positive, got 0"):
        _first_step_grads(rows, expected_batch=0.0, clipping="fused")


def _site_update(tmp_path: Path, frame: object, *, mu: float, divisor: float) -> torch.Tensor:
    result, _ = site_round(tmp_path, frame, mu=mu, expected_batch=divisor, steps=5)
    assert result.update is not None
    return torch.cat([v.flatten() for v in result.update.values()])


def test_a_site_round_uses_the_servers_divisor(tmp_path: Path, frame: object) -> None:
    # Adam's step ignores the divisor's scale; FedProx's proximal term does not, so the
    # divisor visibly reaches the site's steps only there (Adam: 0.07 % apart; FedProx:
    # about 100 %).
    adam_a = _site_update(tmp_path, frame, mu=0.0, divisor=30.0)
    adam_b = _site_update(tmp_path, frame, mu=0.0, divisor=300.0)
    prox_a = _site_update(tmp_path, frame, mu=1.0, divisor=30.0)
    prox_b = _site_update(tmp_path, frame, mu=1.0, divisor=300.0)

    assert (adam_a - adam_b).norm() < 0.01 * adam_a.norm()
    assert (prox_a - prox_b).norm() > 0.05 * prox_a.norm()


def test_the_divisor_is_q_times_the_announced_rows_per_site() -> None:
    announced = RunSettings(sample_rate=0.1, announced_rows=3000, min_sites=3)
    nominal = RunSettings(sample_rate=0.05, announced_rows=0, min_sites=3)
    tiny = RunSettings(sample_rate=0.001, announced_rows=20, min_sites=2)

    assert announced.expected_batch == pytest.approx(100.0)
    assert nominal.expected_batch == pytest.approx(0.05 * NOMINAL_SITE_ROWS)
    assert tiny.expected_batch == 1.0
    sent = announced.train_settings(2, noise_multiplier=1.0, schema_fingerprint="f")
    assert sent.expected_batch == pytest.approx(100.0)


@settings(max_examples=50, deadline=None)
@given(divisor=st.floats(min_value=1.0, max_value=1e6, allow_nan=False))
def test_the_divisor_round_trips_through_the_flower_config(divisor: float) -> None:
    train = TrainSettings(1, 5, 1.0, 0.1, 1.0, 0.01, 10.0, 0, "f", expected_batch=divisor)
    assert TrainSettings.from_config(train.to_config()).expected_batch == divisor


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, r"config key 'expected-batch' is required"),
        (0.0, r"config key 'expected-batch' = 0.0 is invalid: must be > 0"),
        (-5.0, r"config key 'expected-batch' = -5.0 is invalid"),
    ],
)
def test_a_site_refuses_a_missing_or_nonpositive_divisor(value: float | None, message: str) -> None:
    config = TrainSettings(1, 5, 1.0, 0.1, 1.0, 0.01, 10.0, 0, "f", 30.0).to_config()
    if value is None:
        del config["expected-batch"]
    else:
        config["expected-batch"] = value
    with pytest.raises(ConfigError, match=message):
        TrainSettings.from_config(config)
