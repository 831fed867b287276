"""Server optimisers: known values, properties, and exact resumption from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.checkpoint import CheckpointStore
from server.errors import CheckpointError
from server.optimisers import FedAdam, FedAvg, FedAvgM, build_optimiser
from shared.config import AggregationSettings

W = {"w": torch.tensor([1.0]), "b": torch.tensor([0.0, 2.0])}


def _upd(w: float, b: tuple[float, float]) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([w]), "b": torch.tensor(b)}


def test_fedavg_with_unit_rate_adds_the_mean_update() -> None:
    out = FedAvg(lr=1.0).apply(W, _upd(0.5, (-1.0, 0.25)))

    assert torch.equal(out["w"], torch.tensor([1.5]))
    assert torch.equal(out["b"], torch.tensor([-1.0, 2.25]))


def test_fedavgm_accumulates_momentum_by_hand() -> None:
    # β = 0.5, η = 1: v = 1 → w = 2; v = 0.5·1 + 1 = 1.5 → w = 3.5; v = 0.75 → w = 4.25.
    opt, w = FedAvgM(lr=1.0, momentum=0.5), {"w": torch.tensor([1.0])}
    seen = []
    for delta in (1.0, 1.0, 0.0):
        w = opt.apply(w, {"w": torch.tensor([delta])})
        seen.append(float(w["w"]))

    assert seen == pytest.approx([2.0, 3.5, 4.25])
    assert float(opt.state_dict()["momentum/w"]) == pytest.approx(0.75)


def test_fedadam_two_steps_by_hand() -> None:
    # η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 1e-3, v₀ = τ² = 1e-6.
    # Round 1, Δ = 0.5:  m = 0.05, v = 0.99e-6 + 0.01·0.25 = 0.00250099,
    #   w = 1 + 0.1 · 0.05 / (√0.00250099 + 0.001) = 1 + 0.1 · 0.980203 = 1.0980203.
    # Round 2, Δ = −0.5: m = 0.045 − 0.05 = −0.005, v = 0.99·0.00250099 + 0.0025 = 0.00497598,
    #   w = 1.0980203 + 0.1 · (−0.005 / (0.0705406 + 0.001)) = 1.0980203 − 0.0069891 = 1.0910312.
    opt = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w1 = opt.apply({"w": torch.tensor([1.0])}, {"w": torch.tensor([0.5])})
    w2 = opt.apply(w1, {"w": torch.tensor([-0.5])})

    assert float(w1["w"]) == pytest.approx(1.0980203, abs=1e-6)
    assert float(w2["w"]) == pytest.approx(1.0910312, abs=1e-6)
    assert float(opt.state_dict()["v/w"]) == pytest.approx(0.00497598, rel=1e-5)


def test_inputs_are_not_modified() -> None:
    before = {k: v.clone() for k, v in W.items()}
    FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3).apply(W, _upd(1.0, (1.0, 1.0)))

    assert all(torch.equal(W[k], before[k]) for k in W)


updates = st.lists(
    st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=3, max_size=3),
    min_size=1,
    max_size=8,
)


@settings(max_examples=50, deadline=None)
@given(seq=updates)
def test_fedavgm_without_momentum_at_unit_rate_is_fedavg(seq: list[list[float]]) -> None:
    avg, avgm = FedAvg(lr=1.0), FedAvgM(lr=1.0, momentum=0.0)
    a = b = {"w": torch.zeros(3)}
    for delta in seq:
        a = avg.apply(a, {"w": torch.tensor(delta)})
        b = avgm.apply(b, {"w": torch.tensor(delta)})

    assert torch.equal(a["w"], b["w"])


@settings(max_examples=50, deadline=None)
@given(
    seq=updates,
    lr=st.floats(1e-3, 1.0),
    beta1=st.floats(0.0, 0.9),
    beta2=st.floats(0.9, 0.999),
)
def test_fedadam_moves_each_coordinate_by_a_bounded_step(
    seq: list[list[float]], lr: float, beta1: float, beta2: float
) -> None:
    # |m_t| ≤ (1−β₁) Σ_k β₁^k |Δ_{t−k}| and √v_t ≥ √(1−β₂) β₂^{k/2} |Δ_{t−k}| for every k,
    # so |step| ≤ η (1−β₁) / (√(1−β₂) (1 − β₁/√β₂)), and the first step ≤ η (1−β₁) / √(1−β₂).
    opt = FedAdam(lr=lr, beta1=beta1, beta2=beta2, tau=1e-3)
    bound = lr * (1 - beta1) / ((1 - beta2) ** 0.5 * (1 - beta1 / beta2**0.5))
    first = lr * (1 - beta1) / (1 - beta2) ** 0.5
    w = {"w": torch.zeros(3)}
    for t, delta in enumerate(seq):
        new = opt.apply(w, {"w": torch.tensor(delta)})
        step = (new["w"] - w["w"]).abs().max().item()
        assert step <= (first if t == 0 else bound) * (1 + 1e-5) + 1e-7
        w = new


def test_default_fedadam_first_round_moves_each_coordinate_by_at_most_eta() -> None:
    agg = AggregationSettings(aggregation="fedadam")
    out = build_optimiser(agg).apply(
        {"w": torch.zeros(4)}, {"w": torch.tensor([-9, -1e-3, 0.2, 5])}
    )

    assert out["w"].abs().max().item() <= agg.learning_rate


def test_optimiser_state_round_trips_through_a_checkpoint_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    # Prepare: three rounds uninterrupted, and the same three with a restart after round 2.
    agg = AggregationSettings(aggregation="fedadam", server_learning_rate=0.05)
    deltas = [_upd(0.3, (-1.0, 0.5)), _upd(-0.2, (0.4, 0.1)), _upd(0.7, (0.0, -2.0))]
    straight, w = build_optimiser(agg), dict(W)
    for d in deltas:
        w = straight.apply(w, d)
    first, r = build_optimiser(agg), dict(W)
    for d in deltas[:2]:
        r = first.apply(r, d)
    store = CheckpointStore(tmp_path / "ckpt", {"run": 1})

    # Execute
    store.save(2, r, {}, [], first.state_dict())
    ckpt = store.load_latest()
    assert ckpt is not None
    resumed = build_optimiser(agg)
    resumed.load_state_dict(ckpt.optimiser)
    r = resumed.apply(ckpt.state, deltas[2])

    # Assert
    assert set(ckpt.optimiser) == {"m/w", "m/b", "v/w", "v/b"}
    assert all(torch.equal(w[k], r[k]) for k in w)
    assert sorted(p.name for p in store.folder.glob("*.pt")) == [
        "optimiser-0002.pt",
        "round-0002.pt",
    ]


def test_tampered_optimiser_state_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", {"run": 1})
    opt = FedAvgM(lr=1.0, momentum=0.9)
    store.save(1, opt.apply(W, _upd(1.0, (1.0, 1.0))), {}, [], opt.state_dict())
    path = store.folder / "optimiser-0001.pt"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="checkpoint of round 1"):
        store.load_latest()


def test_state_of_another_optimiser_is_refused() -> None:
    with pytest.raises(CheckpointError, match="different --aggregation"):
        FedAvgM(lr=1.0, momentum=0.9).load_state_dict({"m/w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="different --aggregation"):
        FedAvg().load_state_dict({"momentum/w": torch.zeros(1)})
