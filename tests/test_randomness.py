"""A site's secret randomness: full-entropy, independent streams (client.randomness)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import TrainingError
from client.randomness import SEED_BITS, RoundRandomness, secret_seed
from client.sampling import PoissonBatches

CPU = torch.device("cpu")
BASE = 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210


def _noise(seed: int) -> torch.Tensor:
    return torch.randn(64, generator=RoundRandomness.from_seed(seed, CPU).noise)


def test_manual_seed_alone_keeps_32_bits_which_is_why_the_state_is_set() -> None:
    # The weakness being avoided: torch's CPU generator ignores the high bits.
    high = (1 << 40) + 12345
    a = torch.Generator().manual_seed(high)
    b = torch.Generator().manual_seed(high & 0xFFFF_FFFF)
    assert torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))


@settings(max_examples=40, deadline=None)
@given(bit=st.integers(min_value=0, max_value=SEED_BITS - 1))
def test_every_bit_of_the_secret_changes_the_noise_and_the_sampling(bit: int) -> None:
    flipped = BASE ^ (1 << bit)
    assert not torch.equal(_noise(BASE), _noise(flipped))
    u = [
        torch.rand(64, generator=RoundRandomness.from_seed(s, CPU).sampling)
        for s in (BASE, flipped)
    ]
    assert not torch.equal(u[0], u[1])


def test_the_same_seed_reproduces_every_stream() -> None:
    a, b = RoundRandomness.from_seed(BASE, CPU), RoundRandomness.from_seed(BASE, CPU)
    assert torch.equal(torch.randn(16, generator=a.noise), torch.randn(16, generator=b.noise))
    assert torch.equal(torch.rand(16, generator=a.sampling), torch.rand(16, generator=b.sampling))
    assert a.model_seed == b.model_seed
    assert np.array_equal(a.shares.normal(size=4), b.shares.normal(size=4))


def test_sampling_is_independent_of_the_model_randomness_and_the_noise() -> None:
    rand = RoundRandomness.from_seed(BASE, CPU)
    sampler = PoissonBatches(torch.zeros(2000, 1), sample_rate=0.5, generator=rand.sampling)
    torch.manual_seed(rand.model_seed)
    model_u = torch.rand(2000)
    noise_u = torch.rand(2000, generator=rand.noise)
    inc = torch.zeros(2000, dtype=torch.bool)
    inc[sampler.indices()] = True
    # Before the split, the model's uniforms equalled the sampler's, so inclusion
    # (u < q) and the model's draw agreed on every row. Independent streams agree on
    # about half of them.
    for other in (model_u, noise_u):
        agree = float(((other < 0.5) == inc).float().mean())
        assert 0.45 < agree < 0.55


def test_a_negative_seed_is_refused() -> None:
    with pytest.raises(TrainingError, match="non-negative"):
        RoundRandomness.from_seed(-1, CPU)


def test_fresh_secrets_differ() -> None:
    assert len({secret_seed() for _ in range(16)}) == 16
