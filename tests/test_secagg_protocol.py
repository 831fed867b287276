"""Secure aggregation maths: encoding bounds, masking, unmasking, dropouts, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.secagg import (
    FixedPointCodec,
    QuantisationOverflowError,
    SecAggAbortedError,
    SecAggProtocolError,
    ServerRound,
    site_mask,
    site_setup,
    site_share_keys,
    site_unmask,
)
from shared.secagg.crypto import combine_shares, prg, split_secret

CTX = b"test-run|round-1"


def run_round(
    vectors: dict[int, np.ndarray],
    codec: FixedPointCodec,
    *,
    threshold: int,
    drop_before_mask: set[int] = frozenset(),  # type: ignore[assignment]
    drop_before_unmask: set[int] = frozenset(),  # type: ignore[assignment]
    seed: int = 0,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """All four stages in memory. Returns the decoded sum and what the server received."""
    rng = np.random.default_rng(seed)
    server = ServerRound(threshold=threshold, codec=codec, context=CTX)
    me = {i: site_setup(i) for i in vectors}
    roster = server.register_keys({i: s.public for i, s in me.items()})
    sent = {i: site_share_keys(s, roster, threshold=threshold, context=CTX) for i, s in me.items()}
    inboxes = server.route_shares(sent)
    peers = server.share_senders
    masked = {
        i: site_mask(me[i], codec.encode(v, rng), peers, codec=codec, context=CTX)
        for i, v in vectors.items()
        if i not in drop_before_mask
    }
    survivors = server.collect_masked(masked)
    dropped = set(peers) - survivors
    answers = {
        i: site_unmask(
            me[i],
            roster,
            inboxes[i],
            survivors=survivors,
            dropped=dropped,
            threshold=threshold,
            context=CTX,
        )
        for i in survivors
        if i not in drop_before_unmask
    }
    total = server.unmask(answers)
    return codec.decode_sum(total, len(survivors)), masked


def test_sum_equals_plain_sum_within_quantisation_error() -> None:
    rng = np.random.default_rng(1)
    vectors = {i: rng.uniform(-0.5, 0.5, 2000) for i in (1, 2, 3, 4)}
    codec = FixedPointCodec(clip=1.0, bits=16, max_sites=4)

    total, _ = run_round(vectors, codec, threshold=3)

    err = np.abs(total - sum(vectors.values()))
    assert err.max() < 4 * codec.step  # each site is off by less than one level
    assert abs(err.mean()) < codec.step  # stochastic rounding is unbiased


def test_masked_inputs_are_uncorrelated_with_the_inputs() -> None:
    rng = np.random.default_rng(2)
    vectors = {i: rng.normal(0, 0.3, 5000) for i in (1, 2, 3)}
    codec = FixedPointCodec(clip=2.0, bits=20, max_sites=3)

    _, masked = run_round(vectors, codec, threshold=2)

    for i, v in masked.items():
        # Masks are uniform mod 2**k, so |corr| is ~ N(0, 1/n): 5 sigma is 5/sqrt(5000) = 0.07.
        assert abs(np.corrcoef(v.astype(np.float64), vectors[i])[0, 1]) < 0.07


@pytest.mark.parametrize("stage", ["mask", "unmask"])
def test_drops_up_to_the_threshold_still_aggregate(stage: str) -> None:
    rng = np.random.default_rng(3)
    vectors = {i: rng.uniform(-1, 1, 300) for i in range(1, 6)}
    codec = FixedPointCodec(clip=1.0, bits=24, max_sites=5)
    gone = {2, 5}
    kw = {"drop_before_mask": gone} if stage == "mask" else {"drop_before_unmask": gone}

    total, _ = run_round(vectors, codec, threshold=3, **kw)  # type: ignore[arg-type]

    kept = [v for i, v in vectors.items() if stage == "unmask" or i not in gone]
    assert np.abs(total - sum(kept)).max() < len(kept) * codec.step


@pytest.mark.parametrize("stage", ["mask", "unmask"])
def test_one_drop_beyond_the_threshold_aborts(stage: str) -> None:
    rng = np.random.default_rng(4)
    vectors = {i: rng.uniform(-1, 1, 50) for i in range(1, 6)}
    codec = FixedPointCodec(clip=1.0, bits=24, max_sites=5)
    gone = {1, 2, 5}
    kw = {"drop_before_mask": gone} if stage == "mask" else {"drop_before_unmask": gone}

    with pytest.raises(SecAggAbortedError, match="fewer than the threshold 3"):
        run_round(vectors, codec, threshold=3, **kw)  # type: ignore[arg-type]


def test_site_refuses_to_reveal_both_secrets_of_a_peer() -> None:
    me = site_setup(1)
    with pytest.raises(SecAggProtocolError, match="both survivor and dropped"):
        site_unmask(me, {}, {}, survivors={1, 2}, dropped={2}, threshold=2, context=CTX)


def test_tampered_share_fails_authentication() -> None:
    a, b = site_setup(1), site_setup(2)
    roster = {1: a.public, 2: b.public}
    sent = site_share_keys(a, roster, threshold=2, context=CTX)
    bad = {1: sent[2][:-1] + bytes([sent[2][-1] ^ 1])}
    with pytest.raises(SecAggProtocolError, match="failed authentication"):
        site_unmask(b, roster, bad, survivors={1, 2}, dropped=set(), threshold=2, context=CTX)


def test_codec_refuses_counts_that_could_wrap() -> None:
    codec = FixedPointCodec(clip=1.0, bits=8, max_sites=3)
    with pytest.raises(QuantisationOverflowError, match="only holds sums of up to 3"):
        codec.decode_sum(np.zeros(4, dtype=np.uint64), 4)
    with pytest.raises(QuantisationOverflowError, match="lower the bits"):
        FixedPointCodec(clip=1.0, bits=48, max_sites=1 << 20)


def test_unmasking_with_empty_answers_reveals_nothing() -> None:
    with pytest.raises(SecAggAbortedError, match="only 1 share"):
        combine_shares({1: bytes(66)}, threshold=2)


@settings(max_examples=60, deadline=None)
@given(
    clip=st.floats(1e-3, 1e3),
    bits=st.integers(4, 32),
    values=st.lists(st.floats(-2e3, 2e3), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_decode_error_is_below_one_step(
    clip: float, bits: int, values: list[float], seed: int
) -> None:
    codec = FixedPointCodec(clip=clip, bits=bits, max_sites=1)
    x = np.array(values)

    back = codec.decode_sum(codec.encode(x, np.random.default_rng(seed)), 1)

    assert np.all(np.abs(back - np.clip(x, -clip, clip)) <= codec.step * (1 + 1e-9) + 1e-9 * clip)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 30),
    n=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_modular_sum_of_masked_levels_is_exact(bits: int, n: int, seed: int) -> None:
    codec = FixedPointCodec(clip=1.0, bits=bits, max_sites=n)
    rng = np.random.default_rng(seed)
    levels = [rng.integers(0, codec.levels + 1, 16).astype(np.uint64) for _ in range(n)]
    masks = [prg(rng.bytes(32), 16, modulus_bits=codec.modulus_bits) for _ in range(n)]

    total = np.zeros(16, dtype=np.uint64)
    for lv, m in zip(levels, masks, strict=True):
        total = codec.add(total, codec.add(lv, m))
    for m in masks:
        total = codec.sub(total, m)

    assert np.array_equal(total, sum(lv.astype(object) for lv in levels).astype(np.uint64))
    assert int(total.max()) < 1 << codec.modulus_bits


@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 6), extra=st.integers(0, 4), secret=st.binary(min_size=32, max_size=32))
def test_any_t_shares_rebuild_the_secret(t: int, extra: int, secret: bytes) -> None:
    holders = list(range(1, t + extra + 1))
    shares = split_secret(secret, threshold=t, holders=holders)

    subset = {x: shares[x] for x in holders[extra:]}

    assert combine_shares(subset, threshold=t) == secret


def test_cost_benchmark_runs_and_stays_within_its_error_bound() -> None:
    from simulations.benchmarks.secagg_cost import measure

    out = measure(sites=4, params=300, bits=16)

    assert out["threshold"] == 3
    assert out["site_upload_bytes"]["masked_update"] == 4 * 300  # k = 18 bits: sent as uint32
    assert out["max_abs_error_of_sum"] < out["error_bound_of_sum"]
