"""``dp-marginal``: a degree-2 Bayesian network fitted from noisy marginals (PrivBayes-style).

The family discretises every column from the public schema alone
(:mod:`shared.models.marginal_columns`): categoricals into their categories
(plus a null slot when nullable), numerics into ``marginal_bins`` bins (an
integer column with at most that many values gets one bin per value), then one
code per public atom and a null code when nullable. It is fitted in three
Gaussian releases (stages of :class:`shared.models.release.ReleaseFamily`):

0. *grid* (share :data:`GRID_SHARE` of the budget): every site releases its row
   count and the grid histogram of each of the b binned numeric columns
   (sensitivity √(1 + b)); the server moves the bin edges to the histograms'
   noisy quantiles and keeps the histograms for drawing values within a bin
   (the outer bins fitted monotone, :func:`shared.models.marginal_grid.shape_tails`);
1. *structure* (share :data:`STRUCTURE_SHARE`): every site releases all 2-way
   tables on those bins, adjacent value bins merged in pairs
   (:data:`STRUCTURE_MERGE`; :mod:`shared.dp_marginals`: m = d(d − 1)/2 tables,
   L2 sensitivity √m); the server estimates the margins and the pairs' mutual
   information and picks a network with at most two parents per column
   (:func:`shared.dp_bayesnet.select_network`), keeping a named target as a
   parent of every column it informs;
2. *conditionals* (the rest): every site releases the d tables ``(parents…, X)``
   of that network (sensitivity √d); the server fits P(X | parents), never
   drawing a bin the grid found empty.

The bin edges (``edges``), the grid histograms (``fine``), the network
(``order``, ``parents``), the margins (``marginal``) and the conditional
tables (``conditional``, padded to the largest domain) are buffers,
so the model is a ``state_dict`` like every family. Sampling is ancestral in
``order``; a binned numeric value is drawn through its bin's grid histogram, an
atom code gives the atom exactly, and an integer column's code is its value. Rows
go through the base class as point distributions, so constraints and conditions
are met by bounded redraws (:mod:`shared.models.sampling`).

References: Chow & Liu, IEEE Trans. Inf. Theory 14(3), 1968; Zhang et al.,
"PrivBayes", ACM TODS 42(4), 2017; McKenna, Miklau & Sheldon, "Winning the
NIST Contest: A scalable and general approach to differentially private
synthetic data", J. Privacy and Confidentiality 11(3), 2021.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared import dp_bayesnet as bn
from shared import dp_marginals as dm
from shared.errors import ModelError
from shared.models import marginal_columns as mc
from shared.models import marginal_grid as mg
from shared.models.base import register_family
from shared.models.release import ReleaseFamily

#: Share ρ of the release budget spent on the grid histograms that place the bins.
GRID_SHARE = 0.1
#: Share ρ spent on the structure (near PrivBayes's β = 0.3, Zhang et al. 2017,
#: Sec. 6); the conditional tables get the rest.
STRUCTURE_SHARE = 0.3
#: Adjacent value bins merged in the structure's pair tables: choosing parents needs
#: only to detect dependence, and 4 × 4 cells carry a quarter of 8 × 8's noise information.
STRUCTURE_MERGE = 2


class _Network(nn.Module):
    """Buffers only: the network, margins and conditional tables (no trained weights)."""

    order: torch.Tensor
    parents: torch.Tensor
    marginal: torch.Tensor
    conditional: torch.Tensor
    fine: torch.Tensor
    edges: torch.Tensor
    rows: torch.Tensor

    def __init__(self, sizes: list[int], fine: np.ndarray, edges: np.ndarray) -> None:
        super().__init__()
        d, k = len(sizes), max(sizes)
        marginal = torch.from_numpy(mc.uniform_margins(sizes))
        self.register_buffer("order", torch.arange(d, dtype=torch.int64))
        self.register_buffer("parents", torch.full((d, bn.MAX_PARENTS), -1, dtype=torch.int64))
        self.register_buffer("marginal", marginal)
        self.register_buffer("conditional", marginal[:, None, :].repeat(1, k * k, 1))
        self.register_buffer("fine", torch.from_numpy(fine))
        self.register_buffer("edges", torch.from_numpy(edges))
        #: The grid release's noisy row count N (0 until fitted).
        self.register_buffer("rows", torch.zeros((), dtype=torch.float64))


@register_family("dp-marginal")
class MarginalGenerator(ReleaseFamily):
    """Degree-2 Bayesian network over discretised columns, fitted from noisy marginals."""

    def build_module(self) -> nn.Module:
        self.require_pairs()
        self.bins = self.settings.marginal_bins
        self.columns = mc.discretise(self.transformer, self.bins)
        self.sizes = [c.size for c in self.columns]
        self.merge = mc.structure_maps(self.columns, STRUCTURE_MERGE)
        self.coarse_sizes = [int(m.max()) + 1 for m in self.merge]
        self.n_binned = sum(c.binned for c in self.columns)
        target = self.schema.roles.get("target")
        self.root = self.schema.names.index(target) if target else 0
        fine = mc.uniform_fine(self.columns, self.bins)
        return _Network(self.sizes, fine, mc.uniform_edges(self.columns, self.bins))

    @property
    def net(self) -> _Network:
        """The module, typed (it holds the network's buffers)."""
        if not isinstance(self.module, _Network):  # only a subclass could replace it
            raise ModelError(f"dp-marginal's module is a {type(self.module).__name__}")
        return self.module

    # -- release -------------------------------------------------------------------
    @classmethod
    def release_shares(cls) -> tuple[float, ...]:
        """Grid, structure, then conditional tables."""
        return (GRID_SHARE, STRUCTURE_SHARE, 1.0 - GRID_SHARE - STRUCTURE_SHARE)

    def _parents(self) -> np.ndarray:
        return self.net.parents.cpu().numpy()

    def release_length(self, stage: int) -> int:
        """Row count and grid cells (0), all pair tables' cells (1), network tables' cells (2)."""
        if self.check_stage(stage) == 0:
            return 1 + self.n_binned * mc.fine_width(self.bins)
        if stage == 1:
            return dm.release_length(self.coarse_sizes)
        parents = self._parents()
        return sum(
            int(np.prod(bn.table_shape(self.sizes, x, parents[x]))) for x in range(len(self.sizes))
        )

    def release_sensitivity(self, stage: int) -> float:
        """√(1 + b) (stage 0), √m with m = d(d − 1)/2 (stage 1), √d (stage 2).

        One row adds 1 to the row count and to at most one cell of each of the b
        grid histograms (stage 0), and to one cell of each table (stages 1, 2).
        """
        d = len(self.sizes)
        count = (1 + self.n_binned, len(dm.pair_list(d)), d)[self.check_stage(stage)]
        return dm.release_sensitivity(count)

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """``(n, d)`` codes of encoded rows under the fitted bins (a pure function of each row)."""
        return mc.codes(self.columns, rows, self.net.edges.cpu().numpy())

    def statistics(self, rows: np.ndarray, stage: int) -> np.ndarray:
        """Exact statistics of ``stage``: count and grid histograms, pair or network tables."""
        if self.check_stage(stage) == 0:
            return mg.grid_statistics(self.columns, rows, self.bins)
        codes = self.codes(rows)
        if stage == 1:
            coarse = np.stack([m[codes[:, i]] for i, m in enumerate(self.merge)], axis=1)
            return dm.pair_tables(coarse, self.coarse_sizes)
        return bn.node_tables(codes, self.sizes, self._parents())

    def fit_release(self, total: np.ndarray, *, stage: int, noise_std: float) -> None:
        """Stage 0: place the bins; stage 1: choose the network; stage 2: fit its tables."""
        total = self.checked_release(total, stage)
        net = self.net
        if stage == 0:
            self._fit_grid(total, noise_std)
        elif stage == 1:
            self._fit_structure(total, noise_std)
        else:
            parents = self._parents()
            margins = bn.table_margins(total, self.sizes, parents)
            allowed = mg.support(self.columns, net.fine.cpu().numpy(), net.edges.cpu().numpy())
            tables = bn.fit_conditionals(
                total, self.sizes, parents, margins, noise_std=noise_std, support=allowed
            )
            cond = torch.zeros_like(net.conditional)
            for c, table in enumerate(tables):
                cond[c, : table.shape[0], : table.shape[1]] = torch.from_numpy(table)
                net.marginal[c, : len(margins[c])] = torch.from_numpy(margins[c])
            net.conditional.copy_(cond)

    def _fit_grid(self, total: np.ndarray, noise_std: float) -> None:
        """Bins at the grid histograms' noisy quantiles; the histograms for values within."""
        net = self.net
        rows, edges, fine = mg.fit_grids(self.columns, total, self.bins, noise_std=noise_std)
        net.rows.fill_(rows)
        net.edges.copy_(torch.from_numpy(edges))
        net.fine.copy_(torch.from_numpy(fine))
        self._reset_network()

    def _fit_structure(self, total: np.ndarray, noise_std: float) -> None:
        """The network from the merged pair tables' noise-corrected information."""
        net = self.net
        info, coarse, _ = dm.pair_information(total, self.coarse_sizes, noise_std=noise_std)
        # Per-cell noise the stage-2 tables will carry (σ_s ∝ 1/√ρ_s): public.
        _, rho1, rho2 = self.release_shares()
        later = noise_std * (rho1 / rho2) ** 0.5 * self.release_sensitivity(2)
        later /= self.release_sensitivity(1)
        order, parents = bn.select_network(
            info,
            self.sizes,
            root=self.root,
            total=float(net.rows),
            cell_noise_std=later,
            target="target" in self.schema.roles,
        )
        net.order.copy_(torch.from_numpy(order))
        net.parents.copy_(torch.from_numpy(parents))
        for c, (p, m) in enumerate(zip(coarse, self.merge, strict=True)):
            net.marginal[c, : len(m)] = torch.from_numpy(p[m] / np.bincount(m)[m])
        # Until stage 2 is fitted, each column follows its margin whatever its parents.
        net.conditional.copy_(net.marginal[:, None, :].expand_as(net.conditional))

    def _reset_network(self) -> None:
        """No parents, uniform margins: nothing fitted on earlier bins is kept."""
        net = self.net
        net.order.copy_(torch.arange(len(self.sizes)))
        net.parents.fill_(-1)
        net.marginal.copy_(torch.from_numpy(mc.uniform_margins(self.sizes)))
        net.conditional.copy_(net.marginal[:, None, :].expand_as(net.conditional))

    # -- sampling ------------------------------------------------------------------
    def _configurations(self, codes: np.ndarray, x: int, parents: np.ndarray) -> np.ndarray:
        cols = [int(p) for p in parents[x] if p >= 0]
        if not cols:
            return np.zeros(len(codes), dtype=np.int64)
        shape = tuple(self.sizes[p] for p in cols)
        return np.ravel_multi_index(tuple(codes[:, p] for p in cols), shape)

    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Ancestral sampling in the network's order, then encoded rows (point values)."""
        rng = self.sampling_rng(generator)
        parents = self._parents()
        cond = self.net.conditional.cpu().numpy()
        codes = np.zeros((n, len(self.sizes)), dtype=np.int64)
        for x in self.net.order.cpu().numpy().tolist():
            given = self._configurations(codes, x, parents)
            cdf = np.cumsum(cond[x][given, : self.sizes[x]], axis=1)
            u = rng.random(n)[:, None] * cdf[:, -1:]
            codes[:, x] = np.minimum((u >= cdf).sum(axis=1), self.sizes[x] - 1)
        fine, edges = self.net.fine.cpu().numpy(), self.net.edges.cpu().numpy()
        rows = mc.encode_codes(
            self.columns, codes, fine, edges, width=self.transformer.width, rng=rng
        )
        return torch.from_numpy(rows)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the network, refusing one that is not a DAG in order or not a distribution."""
        super().load_state_dict(state)
        net = self.net
        parents, cond = self._parents(), net.conditional.cpu().numpy()
        fine = net.fine.cpu().numpy()
        ok = bn.check_network(net.order.cpu().numpy(), parents)
        ok = ok and bool(np.isfinite(cond).all() and (cond >= 0).all())
        ok = ok and bool(np.isfinite(fine).all() and (fine >= 0).all())
        ok = ok and mc.check_edges(self.columns, net.edges.cpu().numpy(), self.bins)
        for x, size in enumerate(self.sizes if ok else []):
            configs = int(np.prod(bn.table_shape(self.sizes, x, parents[x])[:-1]))
            ok = ok and bool(np.allclose(cond[x, :configs, :size].sum(axis=1), 1.0, atol=1e-6))
        if not ok:
            raise ModelError(
                f"the dp-marginal model for schema {self.schema.name!r} is damaged (its network "
                "is not ordered parents-first, a conditional table is not a distribution or "
                "the bin edges do not rise); "
                "restore the model folder from the run's original output"
            )
