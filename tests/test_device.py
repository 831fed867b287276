"""Device selection, and the CUDA training path (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from client.training import train_dp
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.device import select_device
from shared.errors import ConfigError
from shared.models import build_generator
from shared.tables import validate_frame


def test_auto_picks_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        select_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"CUDA is not available.*--device cpu"):
        select_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dp_training_and_sampling_on_cuda() -> None:
    schema = cohort_schema()
    raw = generate_cohort(2000, seed=2)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    family = build_generator(schema, ModelSettings())
    data = torch.from_numpy(family.encode(frame))
    before = {k: v.clone() for k, v in family.state_dict().items()}

    stats = train_dp(
        family,
        data,
        steps=20,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        learning_rate=1e-2,
        device=torch.device("cuda"),
        seed=0,
    )

    assert stats.steps == 20
    assert next(family.module.parameters()).is_cuda
    assert any(not torch.equal(before[k], v.cpu()) for k, v in family.state_dict().items())
    assert len(family.sample(1000, seed=0)) == 1000
