"""A release family's stages under secure aggregation, with local and distributed noise.

Three sites run the real ClientApp handlers (real ledgers, real secure aggregation)
behind the in-process transport of :mod:`tests.test_secagg_flower`; the ServerApp's
:func:`run_federation` drives them.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import SiteConfigError
from client.ledger import PrivacyLedger
from client.release_stage import exact_statistics, release_statistics
from client.settings import SiteSettings
from server.app import initial_model, run_federation
from server.errors import RoundFailedError
from server.release_stages import RELEASE_FILE, stage_request
from shared import keys
from shared.config import RunSettings
from shared.distdp.accounting import TAU_LIMIT, sum_divergence
from shared.distdp.release import (
    MAX_ROWS,
    release_codec,
    release_grid_bits,
    release_share,
)
from shared.distdp.step import secure_sum
from shared.errors import AccountingError, ModelError
from shared.models.release import ReleaseFamily
from shared.schema import Schema
from tests.test_secagg_flower import SITES, InProcessGrid, make_run
from tests.test_secagg_flower import sites_template as _template

MARGINAL = {"generator": "dp-marginal", "epsilon": 1.0, "secure-aggregation": True}
DISTRIBUTED = {**MARGINAL, "noise-placement": "distributed", "min-sites": SITES}


class ReleaseGrid(InProcessGrid):
    """The in-process transport, with the release share as the third stage."""

    def _gone(self, nid: int, action: str) -> bool:
        return super()._gone(nid, keys.SECAGG_TRAIN if action == keys.RELEASE_SHARE else action)


@pytest.fixture(scope="module")
def sites_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _template.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined,no-any-return]


def _entries(run: Path, i: int) -> list[dict[str, Any]]:
    path = run / "sites" / f"site-{i}" / "state" / "privacy_ledger.json"
    return list(json.loads(path.read_text())["entries"]) if path.exists() else []


def _site(run: Path, i: int) -> SiteSettings:
    folder = run / "sites" / f"site-{i}"
    return SiteSettings(
        site_name=f"site-{i}",
        data_path=folder / "data.csv",
        schema_path=run / "schema.json",
        state_dir=folder / "state",
        budget_epsilon=10.0,
    )


def _stage0_noise(settings: RunSettings, run: Path) -> tuple[np.ndarray, float]:
    """The stage-0 sum's noise (released minus exact) and its σ_sΔ_s."""
    family = initial_model(Schema.load(settings.schema_path), settings)
    assert isinstance(family, ReleaseFamily)
    request = stage_request(family, settings, 0)
    exact = sum(exact_statistics(_site(run, i), request, family.state_dict()) for i in range(SITES))
    saved = json.loads((Path(settings.out_dir) / RELEASE_FILE).read_text())["stages"][0]
    released = np.asarray(saved["total"])
    return released - exact, request.noise_multiplier * request.sensitivity


# ---------------------------------------------------------------------- shares
@settings(max_examples=40, deadline=None)
@given(
    sigma=st.floats(0.05, 20.0),
    delta=st.floats(1.0, 30.0),
    sites=st.integers(1, 12),
    length=st.integers(1, 10**5),
)
def test_grid_bits_are_the_coarsest_that_keep_the_share_sum_one_gaussian(
    sigma: float, delta: float, sites: int, length: int
) -> None:
    def tau(bits: int) -> float:
        return sum_divergence(sigma=sigma, clip_norm=delta, grid=2.0**-bits, sites=sites) * length

    try:
        bits = release_grid_bits(
            noise_multiplier=sigma, sensitivity=delta, noise_sites=sites, length=length
        )
    except AccountingError:
        assert tau(12) > TAU_LIMIT  # refused only when even the finest grid is too coarse
        return
    assert tau(bits) <= TAU_LIMIT
    assert bits == 0 or tau(bits - 1) > TAU_LIMIT
    if sites == 1:
        assert bits == 0  # a single discrete Gaussian needs no refinement


def test_k_shares_sum_to_the_counts_plus_one_central_noise() -> None:
    rng = np.random.default_rng(0)
    counts = [rng.integers(0, 50, 4000).astype(np.float64) for _ in range(3)]
    sigma, delta = 0.8, 3.0
    bits = release_grid_bits(noise_multiplier=sigma, sensitivity=delta, noise_sites=3, length=4000)
    shares = {
        i: release_share(
            c, noise_multiplier=sigma, sensitivity=delta, noise_sites=3, grid_bits=bits, rng=rng
        )
        for i, c in enumerate(counts, start=1)
    }
    total = secure_sum(shares, codec=release_codec(bits), threshold=2, min_participants=3)
    noise = total - sum(counts)
    # Three shares of variance (σΔ)²/3 each: the sum's std is σΔ = 2.4 (within 5 % over 4,000).
    assert np.std(noise) == pytest.approx(sigma * delta, rel=0.05)
    assert abs(np.mean(noise)) < 0.15
    with pytest.raises(ModelError, match="need statistics that are integers"):
        release_share(
            np.array([0.5]), noise_multiplier=1, sensitivity=1, noise_sites=1, grid_bits=0, rng=rng
        )
    # Too large for the ring: clamped (a refusal would reveal the size without noise).
    huge = release_share(
        np.array([-(2.0**40), 2.0**40]),
        noise_multiplier=1e-12,
        sensitivity=1,
        noise_sites=1,
        grid_bits=0,
        rng=rng,
    )
    assert release_codec(0).decode(huge).tolist() == [-MAX_ROWS, MAX_ROWS]


def test_signed_integer_statistics_sum_exactly_through_the_ring() -> None:
    """dp-copula's pair sums are integers of either sign: the ring keeps the sign."""
    rng = np.random.default_rng(1)
    stats = [rng.integers(-10_000, 10_000, 500).astype(np.float64) for _ in range(3)]
    sigma, delta = 1.0, 50.0
    bits = release_grid_bits(noise_multiplier=sigma, sensitivity=delta, noise_sites=3, length=500)
    shares = {
        i: release_share(
            s, noise_multiplier=sigma, sensitivity=delta, noise_sites=3, grid_bits=bits, rng=rng
        )
        for i, s in enumerate(stats, start=1)
    }
    total = secure_sum(shares, codec=release_codec(bits), threshold=2, min_participants=3)
    noise = total - sum(stats)
    assert np.std(noise) == pytest.approx(sigma * delta, rel=0.1)
    assert abs(np.mean(noise)) < 5.0


def test_a_site_refuses_a_share_outside_secure_aggregation_or_on_a_coarse_grid(
    sites_template: Path, tmp_path: Path
) -> None:
    settings, _ = make_run(sites_template, tmp_path / "run", **DISTRIBUTED)
    family = initial_model(Schema.load(settings.schema_path), settings)
    assert isinstance(family, ReleaseFamily)
    request = stage_request(family, settings, 0)
    site = _site(tmp_path / "run", 0)
    stats = exact_statistics(site, request, family.state_dict())
    with pytest.raises(SiteConfigError, match="outside secure aggregation"):
        release_statistics(site, request, stats, run="r")
    tight = replace(request, noise_multiplier=0.02)
    coarse = replace(tight, grid_bits=0)
    assert (
        release_grid_bits(
            noise_multiplier=0.02,
            sensitivity=tight.sensitivity,
            noise_sites=SITES,
            length=tight.length,
        )
        > 0
    )
    with pytest.raises(SiteConfigError, match="too coarse"):
        release_statistics(site, coarse, stats, run="r", share=True)
    assert _entries(tmp_path / "run", 0) == []  # nothing charged


# ---------------------------------------------------------------------- federation
@pytest.mark.usefixtures("_task_identity")
@pytest.mark.parametrize(("extra", "k"), [(DISTRIBUTED, SITES), (MARGINAL, 1)])
def test_secure_stages_reveal_only_the_sum_with_the_planned_noise(
    sites_template: Path, tmp_path: Path, extra: dict[str, Any], k: int
) -> None:
    run = tmp_path / "run"
    settings, cfg = make_run(sites_template, run, **extra)
    grid = ReleaseGrid(cfg)
    out = run_federation(grid, settings)

    # The server only ever held masked shares.
    assert len(grid.received[keys.RELEASE_SHARE]) == 3 * SITES
    for reply in grid.received[keys.RELEASE_SHARE]:
        assert set(reply.content.keys()) == set(keys.RELEASE_SHARE_REPLY_FIELDS)
    # Each site: the three announced releases, (σ_s, q = 1, 1 step) at rounds 1, 2 and 3.
    sigmas = settings.mechanisms()
    for i in range(SITES):
        entries = _entries(run, i)
        assert [e["round"] for e in entries] == [1, 2, 3]
        got = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        assert got == [pytest.approx(m) for m in sigmas]
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["run"]["secure_aggregation"] is True
    assert report["run"]["noise_placement"] == settings.noise_placement
    assert set(report["sent_by_each_site"]) == set(keys.RELEASE_SHARE_REPLY_FIELDS)
    stages = report["release_stages"]["stages"]
    assert [s["noise_sites"] for s in stages] == [k, k, k]
    assert stages[0]["secure_aggregation"]["survivors"] == SITES
    # K = 3: the sum carries one central release's noise; K = 1: √3 times it.
    noise, central = _stage0_noise(settings, run)
    expected = central * math.sqrt(SITES / k)
    assert stages[0]["noise_std_of_sum"] == pytest.approx(expected)
    assert np.std(noise) == pytest.approx(expected, rel=0.1)
    md = (out / "privacy_report.md").read_text()
    assert "learnt only the sum" in md
    assert (out / "synthetic.csv").exists()


@pytest.mark.usefixtures("_task_identity")
def test_a_missing_share_aborts_before_unmasking_and_the_senders_stay_charged(
    sites_template: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    settings, cfg = make_run(sites_template, run, **DISTRIBUTED)
    grid = ReleaseGrid(cfg, silent={keys.SECAGG_TRAIN: {103}})
    with pytest.raises(RoundFailedError, match=r"K = 3 noise shares arrived.*before unmasking"):
        run_federation(grid, settings)
    assert keys.SECAGG_UNMASK not in grid.received
    assert [len(_entries(run, i)) for i in range(SITES)] == [1, 1, 0]


@pytest.mark.usefixtures("_task_identity")
def test_sites_send_nothing_when_fewer_than_k_peers_shared_keys(
    sites_template: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    settings, cfg = make_run(sites_template, run, **DISTRIBUTED)
    grid = ReleaseGrid(cfg, silent={keys.SECAGG_SHARE_KEYS: {103}})
    with pytest.raises(RoundFailedError, match="release stage 0"):
        run_federation(grid, settings)
    # The two sites whose keys went round sit the stage out: a protocol refusal.
    replies = grid.received[keys.RELEASE_SHARE]
    assert len(replies) == 2
    assert all(r.has_error() and "fewer than the K = 3" in r.error.reason for r in replies)
    assert all(_entries(run, i) == [] for i in range(SITES))
    assert PrivacyLedger.open(_site(run, 0).ledger_path, site="site-0").history == []


@pytest.mark.usefixtures("_task_identity")
def test_the_dp_encoder_histograms_are_summed_securely_when_the_run_is(
    sites_template: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    extra = {"numeric-encoder": "dp-quantile", "secure-aggregation": True, "min-sites": SITES}
    settings, cfg = make_run(sites_template, run, **extra, rounds=1)
    grid = ReleaseGrid(cfg)
    out = run_federation(grid, settings)

    assert keys.ENCODER_HISTOGRAM not in grid.received  # no site sent a histogram in clear
    replies = grid.received[keys.ENCODER_SHARE]
    assert len(replies) == SITES
    assert all(set(r.content.keys()) == set(keys.RELEASE_SHARE_REPLY_FIELDS) for r in replies)
    sigma_h = settings.encoder_noise_multiplier()
    for i in range(SITES):
        first = _entries(run, i)[0]
        assert (first["round"], first["steps"], first["sample_rate"]) == (0, 1, 1.0)
        assert first["noise_multiplier"] == pytest.approx(sigma_h)
    info = json.loads((out / "encoder.json").read_text())["info"]
    assert info["per_site_histograms_seen_by_server"] is False
    assert info["sites_sent"] == [f"site-{i}" for i in range(SITES)]
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["numeric_encoder"]["server_sees"].startswith("only the sum")


@pytest.mark.usefixtures("_task_identity", "_no_plan_check")
@pytest.mark.parametrize(
    ("extra", "stage"),
    [
        (DISTRIBUTED, "release stage 0"),
        ({"numeric-encoder": "dp-quantile", "secure-aggregation": True}, "encoder stage"),
    ],
)
def test_a_site_out_of_budget_stops_a_release_at_its_key_set_up_uncharged(
    sites_template: Path, tmp_path: Path, extra: dict[str, Any], stage: str
) -> None:
    # Prepare: site-0 spent its budget in an earlier run; every site must take part.
    run = tmp_path / "run"
    settings, cfg = make_run(sites_template, run, **{**extra, "min-sites": SITES}, rounds=1)
    PrivacyLedger.open(_site(run, 0).ledger_path, site="site-0").record(
        run="old", server_round=1, noise_multiplier=0.5, sample_rate=0.5, steps=50, max_grad_norm=1
    )

    # Execute: the stage's request travels with its key set-up.
    grid = ReleaseGrid(cfg)
    with pytest.raises(RoundFailedError) as failed:
        run_federation(grid, settings)

    # Assert: site-0 refused there, so no site computed, sent or was charged.
    message = str(failed.value)
    assert f"{stage} stopped at the key set-up" in message
    assert "site 'site-0' declines" in message and "No site computed" in message
    assert not {keys.RELEASE_SHARE, keys.ENCODER_SHARE} & set(grid.received)
    assert [len(_entries(run, i)) for i in range(SITES)] == [1, 0, 0]
