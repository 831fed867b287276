"""``dp-marginal``: a degree-2 Bayesian network fitted from noisy marginals (PrivBayes-style).

The family discretises every column from the public schema alone:
categoricals into their categories (plus a null slot when nullable), numerics
into ``marginal_bins`` equal-width bins on the public bounds (an integer column
with at most that many values gets one bin per value), plus a null bucket when
nullable. It is fitted in two Gaussian releases (stages of
:class:`shared.models.release.ReleaseFamily`):

0. *structure* (share :data:`STRUCTURE_SHARE` of the budget): every site releases
   all 2-way tables (:mod:`shared.dp_marginals`: m = d(d − 1)/2 tables, L2
   sensitivity √m); the server estimates the margins and the pairs' mutual
   information and picks a network with at most two parents per column
   (:func:`shared.dp_bayesnet.select_network`);
1. *conditionals* (the rest): every site releases the d tables ``(parents…, X)``
   of that network (sensitivity √d); the server fits P(X | parents).

The network (``order``, ``parents``), the margins (``marginal``) and the
conditional tables (``conditional``, padded to the largest domain) are buffers,
so the model is a ``state_dict`` like every family. Sampling is ancestral in
``order``; a numeric value is drawn uniformly within its bin (or is the bin's
integer). Rows go through the base class as point distributions, so
constraints and conditions are met by bounded redraws (:mod:`shared.models.sampling`).

References: Chow & Liu, IEEE Trans. Inf. Theory 14(3), 1968; Zhang et al.,
"PrivBayes", ACM TODS 42(4), 2017; McKenna, Miklau & Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private
synthetic data", J. Privacy and Confidentiality 11(3), 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared import dp_bayesnet as bn
from shared import dp_marginals as dm
from shared.errors import ModelError
from shared.models.base import register_family
from shared.models.release import ReleaseFamily
from shared.schema import Column
from shared.transforms import SpanInfo


@dataclass(frozen=True)
class _Discrete:
    """How one column maps to codes ``0..size-1`` and back (public, from the schema)."""

    column: Column
    span: SpanInfo
    missing: SpanInfo | None
    size: int
    #: Numeric only: each bin's low edge and width in encoded units ([-1, 1]).
    low: np.ndarray | None = None
    width: np.ndarray | None = None


def _discretise(col: Column, span: SpanInfo, missing: SpanInfo | None, bins: int) -> _Discrete:
    if not col.is_numeric:
        return _Discrete(col, span, None, span.width)
    lo, hi = float(col.minimum), float(col.maximum)
    n_values = round(hi - lo) + 1
    if col.kind == "integer" and n_values <= bins:
        edges = np.linspace(-1.0, 1.0, n_values)  # one point per integer value
        low, width = edges, np.zeros(n_values)
    else:
        edges = np.linspace(-1.0, 1.0, bins + 1)
        low, width = edges[:-1], np.diff(edges)
    size = len(low) + (1 if col.nullable else 0)
    return _Discrete(col, span, missing, size, low, width)


#: Share ρ of the release budget spent on the structure (PrivBayes's β = 0.3, Zhang et al.
#: 2017, Sec. 6); the conditional tables get the rest.
STRUCTURE_SHARE = 0.3


class _Network(nn.Module):
    """Buffers only: the network, margins and conditional tables (no trained weights)."""

    order: torch.Tensor
    parents: torch.Tensor
    marginal: torch.Tensor
    conditional: torch.Tensor

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        d, k = len(sizes), max(sizes)
        marginal = torch.zeros(d, k, dtype=torch.float64)
        for c, size in enumerate(sizes):
            marginal[c, :size] = 1.0 / size  # unfitted: independent uniform columns
        self.register_buffer("order", torch.arange(d, dtype=torch.int64))
        self.register_buffer("parents", torch.full((d, bn.MAX_PARENTS), -1, dtype=torch.int64))
        self.register_buffer("marginal", marginal)
        self.register_buffer("conditional", marginal[:, None, :].repeat(1, k * k, 1))


@register_family("dp-marginal")
class MarginalGenerator(ReleaseFamily):
    """Degree-2 Bayesian network over discretised columns, fitted from noisy marginals."""

    def build_module(self) -> nn.Module:
        missing = {s.column: s for s in self.transformer.spans if s.kind == "missing"}
        spans = [s for s in self.transformer.spans if s.kind != "missing"]
        bins = self.settings.marginal_bins
        self.columns = [
            _discretise(self.schema.column(s.column), s, missing.get(s.column), bins) for s in spans
        ]
        self.sizes = [c.size for c in self.columns]
        target = self.schema.roles.get("target")
        self.root = self.schema.names.index(target) if target else 0
        return _Network(self.sizes)

    # -- release -------------------------------------------------------------------
    def release_shares(self) -> tuple[float, ...]:
        """Structure, then conditional tables."""
        return (STRUCTURE_SHARE, 1.0 - STRUCTURE_SHARE)

    def _parents(self) -> np.ndarray:
        return self.module.parents.cpu().numpy()

    def release_length(self, stage: int) -> int:
        """Cells of all pair tables (stage 0) or of the network's tables (stage 1)."""
        if _stage(stage) == 0:
            return dm.release_length(self.sizes)
        parents = self._parents()
        return sum(
            int(np.prod(bn.table_shape(self.sizes, x, parents[x]))) for x in range(len(self.sizes))
        )

    def release_sensitivity(self, stage: int) -> float:
        """√m for the m = d(d − 1)/2 pair tables (stage 0), √d for the d tables (stage 1)."""
        d = len(self.sizes)
        return dm.release_sensitivity(len(dm.pair_list(d)) if _stage(stage) == 0 else d)

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """``(n, d)`` codes of encoded rows (a pure function of each row)."""
        x = np.asarray(rows, dtype=np.float64)
        out = np.empty((len(x), len(self.columns)), dtype=np.int64)
        for i, c in enumerate(self.columns):
            s = c.span
            if c.low is None:
                out[:, i] = np.argmax(x[:, s.start : s.stop], axis=1)
                continue
            v = x[:, s.start]
            n_bins = len(c.low)
            if c.width is not None and not c.width.any():  # one bin per integer value
                code = np.rint((v + 1.0) / 2.0 * (n_bins - 1))
            else:
                code = np.floor((v + 1.0) / 2.0 * n_bins)
            out[:, i] = np.clip(code, 0, n_bins - 1)
            if c.missing is not None:
                out[x[:, c.missing.start + 1] > 0.5, i] = n_bins
        return out

    def statistics(self, rows: np.ndarray, stage: int) -> np.ndarray:
        """Exact pair tables (stage 0) or network tables (stage 1) of the rows' codes."""
        codes = self.codes(rows)
        if _stage(stage) == 0:
            return dm.pair_tables(codes, self.sizes)
        return bn.node_tables(codes, self.sizes, self._parents())

    def fit_release(self, total: np.ndarray, *, stage: int, noise_std: float) -> None:
        """Stage 0: choose the network; stage 1: fit its conditional tables."""
        total = np.asarray(total, dtype=np.float64)
        if total.shape != (self.release_length(stage),):
            raise ModelError(
                f"stage {stage} release has shape {total.shape}, expected "
                f"({self.release_length(stage)},) for schema {self.schema.name!r} with "
                f"marginal-bins {self.settings.marginal_bins}; every site must use the same "
                "schema and settings, and stage 1 must follow stage 0's fit"
            )
        net = self.module
        if _stage(stage) == 0:
            info, margins, rows = dm.pair_information(total, self.sizes, noise_std=noise_std)
            # Per-cell noise the stage-1 tables will carry (σ_s ∝ 1/√ρ_s): public.
            rho0, rho1 = self.release_shares()
            later = noise_std * (rho0 / rho1) ** 0.5 * self.release_sensitivity(1)
            later /= self.release_sensitivity(0)
            order, parents = bn.select_network(
                info, self.sizes, root=self.root, total=rows, cell_noise_std=later
            )
            net.order.copy_(torch.from_numpy(order))
            net.parents.copy_(torch.from_numpy(parents))
            for c, p in enumerate(margins):
                net.marginal[c, : len(p)] = torch.from_numpy(p)
            # Until stage 1 is fitted, each column follows its margin whatever its parents.
            net.conditional.copy_(net.marginal[:, None, :].expand_as(net.conditional))
            return
        margins = [net.marginal[c, :k].cpu().numpy() for c, k in enumerate(self.sizes)]
        tables = bn.fit_conditionals(
            total, self.sizes, self._parents(), margins, noise_std=noise_std
        )
        cond = torch.zeros_like(net.conditional)
        for c, table in enumerate(tables):
            cond[c, : table.shape[0], : table.shape[1]] = torch.from_numpy(table)
        net.conditional.copy_(cond)

    # -- sampling ------------------------------------------------------------------
    def _configurations(self, codes: np.ndarray, x: int, parents: np.ndarray) -> np.ndarray:
        cols = [int(p) for p in parents[x] if p >= 0]
        if not cols:
            return np.zeros(len(codes), dtype=np.int64)
        shape = tuple(self.sizes[p] for p in cols)
        return np.ravel_multi_index(tuple(codes[:, p] for p in cols), shape)

    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Ancestral sampling in the network's order, then encoded rows (point values)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        parents = self._parents()
        cond = self.module.conditional.cpu().numpy()
        codes = np.zeros((n, len(self.sizes)), dtype=np.int64)
        for x in self.module.order.cpu().numpy().tolist():
            given = self._configurations(codes, x, parents)
            cdf = np.cumsum(cond[x][given, : self.sizes[x]], axis=1)
            u = rng.random(n)[:, None] * cdf[:, -1:]
            codes[:, x] = np.minimum((u >= cdf).sum(axis=1), self.sizes[x] - 1)
        return torch.from_numpy(self._encode_codes(codes, rng))

    def _encode_codes(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros((len(codes), self.transformer.width), dtype=np.float32)
        rows = np.arange(len(codes))
        for i, c in enumerate(self.columns):
            code = codes[:, i]
            if c.low is None or c.width is None:
                out[rows, c.span.start + code] = 1.0
                continue
            n_bins = len(c.low)
            present = code < n_bins
            b = np.minimum(code, n_bins - 1)
            value = c.low[b] + rng.random(len(code)) * c.width[b]
            out[:, c.span.start] = np.where(present, value, 0.0)
            if c.missing is not None:
                out[rows, c.missing.start + (~present).astype(np.int64)] = 1.0
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the network, refusing one that is not a DAG in order or not a distribution."""
        super().load_state_dict(state)
        net = self.module
        parents, cond = self._parents(), net.conditional.cpu().numpy()
        ok = bn.check_network(net.order.cpu().numpy(), parents)
        ok = ok and bool(np.isfinite(cond).all() and (cond >= 0).all())
        for x, size in enumerate(self.sizes if ok else []):
            configs = int(np.prod(bn.table_shape(self.sizes, x, parents[x])[:-1]))
            ok = ok and bool(np.allclose(cond[x, :configs, :size].sum(axis=1), 1.0, atol=1e-6))
        if not ok:
            raise ModelError(
                f"the dp-marginal model for schema {self.schema.name!r} is damaged (its network "
                "is not ordered parents-first or a conditional table is not a distribution); "
                "restore the model folder from the run's original output"
            )


def _stage(stage: int) -> int:
    if stage not in (0, 1):
        raise ModelError(f"dp-marginal has release stages 0 and 1, not {stage}")
    return stage
