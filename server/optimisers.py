"""Server optimisers: turn the sites' mean update into the next global model.

The mean of the sites' clipped updates Δ̄ = mean_i (w_i − w) is treated as a
pseudo-gradient (its negative, strictly: it points the way the sites moved), as in
Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2:

* ``fedavg``  (McMahan et al. 2017): w ← w + η·Δ̄; η = 1 is plain FedAvg.
* ``fedavgm`` (Hsu, Qi and Brown 2019, "Measuring the effects of non-identical data
  distribution"): v ← β·v + Δ̄, w ← w + η·v.
* ``fedadam`` (Reddi et al. 2021): m ← β₁·m + (1 − β₁)·Δ̄, v ← β₂·v + (1 − β₂)·Δ̄²,
  w ← w + η·m / (√v + τ), with m₀ = 0 and v₀ = τ² (no bias correction, as in the paper).
* ``fedprox`` (Li et al., MLSys 2020) is FedAvg on the server; its proximal term
  lives in the sites' local objective (:mod:`client.steppers`).

They need only Δ̄, so they work unchanged under secure aggregation, where the
server learns nothing but the sum. Everything they do is post-processing of the
sites' DP outputs: no privacy cost. Their state (momentum, moments) is a
``state_dict`` of tensors, saved with each checkpoint so a resumed run continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Protocol

import torch

from server.errors import CheckpointError
from shared.config import AggregationSettings

StateDict = dict[str, torch.Tensor]


class ServerOptimiser(Protocol):
    """Applies one round's mean update; its state round-trips through ``state_dict``."""

    def apply(self, weights: StateDict, mean_update: StateDict) -> StateDict:
        """The next global weights (new tensors; the inputs are not modified)."""
        ...

    def state_dict(self) -> StateDict:
        """The optimiser's state (empty for stateless ones)."""
        ...

    def load_state_dict(self, state: StateDict) -> None:
        """Restore :meth:`state_dict`'s output."""
        ...


def _step(weights: StateDict, direction: StateDict, lr: float) -> StateDict:
    return {k: weights[k] + (lr * direction[k]).to(weights[k].dtype) for k in weights}


class _Stateful:
    """State kept as named tensors, one buffer per weight (``"<buffer>/<weight>"``)."""

    buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.state: StateDict = {}

    def state_dict(self) -> StateDict:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: StateDict) -> None:
        bad = {k for k in state if k.partition("/")[0] not in self.buffers}
        if bad:
            raise CheckpointError(
                f"server optimiser state has unknown entries {sorted(bad)[:3]}; it was saved "
                "by a different --aggregation; resume with the original one or use a new --out"
            )
        self.state = {k: v.clone().float() for k, v in state.items()}

    def _buffer(self, name: str, key: str, like: torch.Tensor, fill: float) -> torch.Tensor:
        full = f"{name}/{key}"
        if full not in self.state:
            self.state[full] = torch.full_like(like, fill, dtype=torch.float32)
        return self.state[full]


class FedAvg(_Stateful):
    """w ← w + η·Δ̄ (η = 1: the sites' mean model)."""

    def __init__(self, *, lr: float = 1.0) -> None:
        super().__init__()
        self.lr = lr

    def apply(self, weights: StateDict, mean_update: StateDict) -> StateDict:
        return _step(weights, {k: mean_update[k].float() for k in weights}, self.lr)


class FedAvgM(_Stateful):
    """Server momentum: v ← β·v + Δ̄, w ← w + η·v (Hsu et al. 2019)."""

    buffers = ("momentum",)

    def __init__(self, *, lr: float, momentum: float) -> None:
        super().__init__()
        self.lr, self.momentum = lr, momentum

    def apply(self, weights: StateDict, mean_update: StateDict) -> StateDict:
        direction = {}
        for k in weights:
            v = self._buffer("momentum", k, weights[k], 0.0)
            v.mul_(self.momentum).add_(mean_update[k].float())
            direction[k] = v
        return _step(weights, direction, self.lr)


class FedAdam(_Stateful):
    """Adam on the pseudo-gradient Δ̄ (Reddi et al. 2021, Algorithm 2, no bias correction).

    Each coordinate moves by at most η·(1 − β₁) / (√(1 − β₂)·(1 − β₁/√β₂)) per round
    (when β₁ < √β₂); with the defaults, the first round moves each by at most η.
    """

    buffers = ("m", "v")

    def __init__(self, *, lr: float, beta1: float, beta2: float, tau: float) -> None:
        super().__init__()
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau

    def apply(self, weights: StateDict, mean_update: StateDict) -> StateDict:
        direction = {}
        for k in weights:
            g = mean_update[k].float()
            m = self._buffer("m", k, weights[k], 0.0)
            v = self._buffer("v", k, weights[k], self.tau**2)
            m.mul_(self.beta1).add_(g, alpha=1.0 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
            direction[k] = m / (v.sqrt() + self.tau)
        return _step(weights, direction, self.lr)


def build_optimiser(settings: AggregationSettings) -> ServerOptimiser:
    """The server optimiser for ``settings.aggregation`` (fedprox aggregates as fedavg)."""
    lr = settings.learning_rate
    if settings.aggregation == "fedavgm":
        return FedAvgM(lr=lr, momentum=settings.server_momentum)
    if settings.aggregation == "fedadam":
        return FedAdam(
            lr=lr,
            beta1=settings.server_momentum,
            beta2=settings.server_beta2,
            tau=settings.server_tau,
        )
    return FedAvg(lr=lr)
