"""Where each site's DP noise comes from."""

from __future__ import annotations

from pathlib import Path

from client.randomness import SEED_BITS
from client.settings import SiteSettings
from client.site import noise_seed


def site(name: str, simulation_seed: int | None) -> SiteSettings:
    return SiteSettings(
        site_name=name,
        data_path=Path("d.csv"),
        schema_path=Path("s.json"),
        state_dir=Path("st"),
        budget_epsilon=1.0,
        simulation_seed=simulation_seed,
    )


def test_real_sites_draw_fresh_secret_seeds() -> None:
    real = site("hospital-a", None)
    assert len({noise_seed(real, 1) for _ in range(20)}) == 20


def test_simulated_sites_reproduce_but_never_share_noise() -> None:
    a, b = site("site-0", 7), site("site-1", 7)

    assert noise_seed(a, 3) == noise_seed(site("site-0", 7), 3)
    assert (
        len(
            {noise_seed(a, 3), noise_seed(b, 3), noise_seed(a, 4), noise_seed(site("site-0", 8), 3)}
        )
        == 4
    )
    assert 0 <= noise_seed(a, 3) < 2**SEED_BITS
    assert max(noise_seed(site(f"s{i}", 7), 1) for i in range(8)) >= 2**64  # all 128 bits


def test_real_seeds_carry_128_bits() -> None:
    real = site("hospital-a", None)
    assert max(noise_seed(real, 1) for _ in range(8)) >= 2**100
