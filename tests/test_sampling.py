"""Vectorised Poisson sampling (the sampling the accountants assume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import TrainingError
from client.sampling import PoissonBatches


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), q=st.floats(0.01, 1.0), seed=st.integers(0, 2**31))
def test_batches_are_subsets_without_repeats(n: int, q: float, seed: int) -> None:
    rows = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    batch = PoissonBatches(rows, sample_rate=q, generator=_gen(seed)).next_batch()
    values = batch[:, 0].tolist()
    assert len(values) == len(set(values)) <= n
    assert all(0 <= v < n for v in values)


def test_batch_size_is_binomial_n_q() -> None:
    # Prepare: 2,000 steps over 1,000 rows at q = 0.05 (mean 50, variance 47.5)
    sampler = PoissonBatches(torch.zeros(1000, 2), sample_rate=0.05, generator=_gen(0))

    # Execute
    sizes = np.array([len(sampler.indices()) for _ in range(2000)])

    # Assert: mean within 4 standard errors, variance that of Binomial(1000, 0.05)
    assert abs(sizes.mean() - 50.0) < 4 * np.sqrt(47.5 / 2000)
    assert 40.0 < sizes.var() < 55.0


def test_each_row_is_included_with_probability_q() -> None:
    sampler = PoissonBatches(torch.zeros(20, 1), sample_rate=0.3, generator=_gen(1))
    counts = torch.zeros(20)
    for _ in range(3000):
        counts[sampler.indices()] += 1
    assert torch.all((counts / 3000 - 0.3).abs() < 0.04)


def test_memmap_rows_give_the_same_batches_as_a_tensor(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((500, 3), dtype=np.float32)
    mm = np.memmap(tmp_path / "rows.f32", dtype=np.float32, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.memmap(tmp_path / "rows.f32", dtype=np.float32, mode="r", shape=data.shape)

    a = PoissonBatches(torch.from_numpy(data), sample_rate=0.1, generator=_gen(5)).next_batch()
    b = PoissonBatches(ro, sample_rate=0.1, generator=_gen(5)).next_batch()

    assert b.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize("q", [0.0, 1.5])
def test_sample_rate_outside_unit_interval_is_refused(q: float) -> None:
    with pytest.raises(TrainingError, match=r"sample rate q must be in \(0, 1\]"):
        PoissonBatches(torch.zeros(3, 1), sample_rate=q, generator=_gen(0))
