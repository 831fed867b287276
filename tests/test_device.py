"""Device selection, and the CUDA training path (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from client.training import train_dp
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.device import select_device
from shared.distdp.encoding import ModularCodec
from shared.distdp.step import clipped_gradient_sum, parameter_count, site_share
from shared.errors import ConfigError
from shared.models import build_generator
from shared.tables import validate_frame


def _cohort_rows(n: int, *, seed: int) -> pd.DataFrame:
    return validate_frame(generate_cohort(n, seed=seed), cohort_schema())


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
@pytest.mark.parametrize("generator", ["dp-vae", "dp-diffusion", "dp-ctgan", "staged"])
def test_dp_training_and_sampling_on_cuda(generator: str) -> None:
    family = build_generator(cohort_schema(), ModelSettings(generator=generator))
    data = torch.from_numpy(family.encode(_cohort_rows(2000, seed=2)))
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distributed_clipped_sum_and_share_on_cuda() -> None:
    family = build_generator(cohort_schema(), ModelSettings())
    module = family.private_module().to("cuda")
    batch = torch.from_numpy(family.encode(_cohort_rows(300, seed=3))).to("cuda")

    grad_sum = clipped_gradient_sum(module, family.criterion(), batch, clip_norm=0.5)
    share = site_share(
        grad_sum,
        sigma=1.0,
        clip_norm=0.5,
        noise_sites=3,
        codec=ModularCodec(grid=1e-4, modulus_bits=40),
        rng=np.random.default_rng(0),
    )

    assert grad_sum.is_cuda and grad_sum.shape == (parameter_count(module),)
    # Each of the 300 rows contributes at most C = 0.5 in L2 norm.
    assert 0 < float(grad_sum.norm()) <= 300 * 0.5
    assert share.shape == grad_sum.shape


def test_a_device_name_is_checked_without_a_gpu() -> None:
    from shared.device import check_device_name

    for name in ("auto", "cpu", "cuda", "cuda:3"):
        check_device_name(name)
    with pytest.raises(ConfigError, match="unknown device 'gpu'; use auto, cpu, cuda or cuda:N"):
        check_device_name("gpu")
