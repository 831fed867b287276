"""``dp-copula``: a Gaussian copula over discretised columns, fitted from two noisy releases.

The columns are discretised exactly as ``dp-marginal`` does
(:mod:`shared.models.marginal_columns`: categories, quantile bins of numerics on
a public grid, atom and null codes). The family is fitted in two Gaussian
releases (stages of :class:`shared.models.release.ReleaseFamily`):

0. *grid* (share :data:`GRID_SHARE`): every site releases its row count and the
   grid histogram of each of the b binned numeric columns (sensitivity √(1 + b));
   the server places the bins at the histograms' noisy quantiles and keeps them
   for drawing values within a bin (``dp-marginal``'s stage 0,
   :func:`shared.models.marginal_grid.fit_grid`).
1. *margins* (share :data:`MARGIN_SHARE`): every site releases the count of every
   code of every column under those bins (one code per column), and, when the
   schema names a categorical target, the same counts over the rows in the
   target's last category for each of the r categorical columns with 3 or more
   codes that the schema does not mark ``ordered`` (sensitivity √(d + r)). A
   bin's own count is steadier than the sum of its grid cells' noise. Those r
   columns' codes are then put in order of their noisy share of the target's
   last category (:func:`shared.models.copula_math.shrunk_share`): a nominal
   column (occupation) has no public order, and the schema's list order would
   make its neighbours in the list look alike.
2. *pairs* (the rest): every site gives each row the normal scores of its codes
   under those margins (:mod:`shared.models.copula_math`), scales the score
   vector down to ‖z‖ ≤ B (B² the :data:`CLIP_QUANTILE` quantile of χ²_d), quantises it, and releases
   Σ z_i z_j over its rows for every pair i < j (sensitivity (SCORE_SCALE · B)²/√2).
   The server turns the sum into a positive-definite latent correlation matrix
   (:mod:`shared.models.copula_latent`).

Sampling draws u ~ N(0, R), cuts each column at its margin's thresholds, and
draws a binned value through its bin's grid histogram. Compared with the
Bayesian network of ``dp-marginal``, one scalar per pair of columns carries the
dependence (not a table of cells), so on small tables it keeps far more of the
pairwise structure at the same ε; what it cannot keep is dependence that is not
monotone in the codes' order (a nominal category's order is the schema's, which
says nothing about its neighbours), nor any interaction of three columns.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import chi2
from torch import nn

from shared.dp_bayesnet import norm_sub
from shared.errors import ModelError
from shared.models import copula_latent as cl
from shared.models import copula_math as cm
from shared.models import marginal_columns as mc
from shared.models import marginal_grid as mg
from shared.models.base import register_family
from shared.models.release import ReleaseFamily

#: Share ρ of the release budget spent on the grid histograms that place the bins.
GRID_SHARE = 0.1
#: Share ρ spent on the margins (every column's code counts).
MARGIN_SHARE = 0.2
#: Row clip B² = the CLIP_QUANTILE quantile of χ²_d: ‖z‖² of d independent scores is
#: about χ²_d, so this clips about 3 % of such rows at any d (1.9 · d at d = 11,
#: 3 · d at d = 3); a tighter clip adds less noise but biases every correlation towards
#: 0 (chosen on the benchmark tables, README "dp-copula").
CLIP_QUANTILE = 0.97


class _Copula(nn.Module):
    """Buffers only: bin edges, grid histograms, margins and the latent correlation."""

    fine: torch.Tensor
    edges: torch.Tensor
    rows: torch.Tensor
    margin: torch.Tensor
    corr: torch.Tensor
    order: torch.Tensor

    def __init__(
        self, sizes: list[int], fine: np.ndarray, edges: np.ndarray, order: np.ndarray
    ) -> None:
        super().__init__()
        d = len(sizes)
        margin = torch.from_numpy(mc.uniform_margins(sizes))
        self.register_buffer("fine", torch.from_numpy(fine))
        self.register_buffer("edges", torch.from_numpy(edges))
        #: The grid release's noisy row count N (0 until fitted).
        self.register_buffer("rows", torch.zeros((), dtype=torch.float64))
        self.register_buffer("margin", margin)
        self.register_buffer("corr", torch.eye(d, dtype=torch.float64))
        #: Each column's codes from lowest to highest (padded with −1).
        self.register_buffer("order", torch.from_numpy(order))


@register_family("dp-copula")
class CopulaGenerator(ReleaseFamily):
    """Gaussian copula over discretised columns, fitted from noisy margins and pair sums."""

    def build_module(self) -> nn.Module:
        self.require_pairs()
        self.bins = self.settings.marginal_bins
        self.columns = mc.discretise(self.transformer, self.bins)
        self.sizes = [c.size for c in self.columns]
        self.binned = [i for i, c in enumerate(self.columns) if c.binned]
        target = self.schema.roles.get("target")
        t = self.schema.names.index(target) if target else -1
        self.target = t if t >= 0 and not self.columns[t].column.is_numeric else -1
        # Unordered categoricals of 3+ codes are put in order of their share of the
        # target's last category (stage 1); others keep the public order.
        self.reordered = [
            i
            for i, c in enumerate(self.columns)
            if self.target >= 0
            and i != self.target
            and not c.column.is_numeric
            and not c.column.ordered
            and c.size > 2
        ]
        fine = mc.uniform_fine(self.columns, self.bins)
        edges = mc.uniform_edges(self.columns, self.bins)
        return _Copula(self.sizes, fine, edges, self._public_orders(edges))

    def _public_orders(self, edges: np.ndarray) -> np.ndarray:
        out = np.full((len(self.sizes), max(self.sizes)), -1, dtype=np.int64)
        for i, (c, e) in enumerate(zip(self.columns, edges, strict=True)):
            out[i, : c.size] = cm.code_order(c, e)
        return out

    @property
    def cop(self) -> _Copula:
        """The module, typed (it holds the copula's buffers)."""
        if not isinstance(self.module, _Copula):  # only a subclass could replace it
            raise ModelError(f"dp-copula's module is a {type(self.module).__name__}")
        return self.module

    @property
    def clip_norm(self) -> float:
        """B, the L2 bound on one row's score vector (public: d and CLIP_QUANTILE)."""
        return math.sqrt(float(chi2.ppf(CLIP_QUANTILE, len(self.sizes))))

    # -- release -------------------------------------------------------------------
    @classmethod
    def release_shares(cls) -> tuple[float, ...]:
        """Grid, margins, then pair sums."""
        return (GRID_SHARE, MARGIN_SHARE, 1.0 - GRID_SHARE - MARGIN_SHARE)

    def release_length(self, stage: int) -> int:
        """1 + grid cells (0); every column's codes (1); d(d − 1)/2 pair sums (2)."""
        if self.check_stage(stage) == 0:
            return 1 + len(self.binned) * mc.fine_width(self.bins)
        if stage == 1:
            return sum(self.sizes) + sum(self.sizes[i] for i in self.reordered)
        d = len(self.sizes)
        return d * (d - 1) // 2

    def release_sensitivity(self, stage: int) -> float:
        """√(1 + b) (stage 0), √(d + r) (1), (SCORE_SCALE · B)²/√2 (2).

        Stage 1: one code per column, and for a row in the target's last category
        one more count in each of the r reordered columns' tables.
        """
        if self.check_stage(stage) == 0:
            return math.sqrt(1 + len(self.binned))
        if stage == 1:
            return math.sqrt(len(self.sizes) + len(self.reordered))
        return cm.pair_sensitivity(self.clip_norm)

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """``(n, d)`` codes of encoded rows under the fitted bins (a pure function of each row)."""
        return mc.codes(self.columns, rows, self.cop.edges.cpu().numpy())

    def _orders(self) -> list[np.ndarray]:
        order = self.cop.order.cpu().numpy()
        return [order[i, :size] for i, size in enumerate(self.sizes)]

    def _positive(self) -> int:
        """Code of the target's last category (the positive class of a binary target)."""
        return len(self.columns[self.target].column.categories) - 1

    def _margins(self) -> list[np.ndarray]:
        m = self.cop.margin.cpu().numpy()
        return [m[i, :size] for i, size in enumerate(self.sizes)]

    def statistics(self, rows: np.ndarray, stage: int) -> np.ndarray:
        """Exact statistics of ``stage``: count and grids (0), code counts (1), pair sums (2)."""
        if self.check_stage(stage) == 0:
            return mg.grid_statistics(self.columns, rows, self.bins)
        codes = self.codes(rows)
        if stage == 1:
            parts = [np.bincount(codes[:, i], minlength=n) for i, n in enumerate(self.sizes)]
            if self.reordered:  # only with a categorical target
                positive = codes[codes[:, self.target] == self._positive()]
                parts += [
                    np.bincount(positive[:, i], minlength=self.sizes[i]) for i in self.reordered
                ]
            return np.concatenate(parts).astype(np.float64)
        orders = self._orders()
        scores = [cm.margin_scores(m, o)[0] for m, o in zip(self._margins(), orders, strict=True)]
        return cm.pair_sums(cm.clipped_scores(codes, scores, clip_norm=self.clip_norm))

    def fit_release(self, total: np.ndarray, *, stage: int, noise_std: float) -> None:
        """Stage 0: bins; stage 1: margins; stage 2: the latent correlation."""
        total = self.checked_release(total, stage)
        if stage == 0:
            self._fit_grid(total, noise_std)
            return
        if stage == 1:
            self._fit_margins(total, noise_std)
            return
        orders = self._orders()
        steps = [cl.Steps(m, o) for m, o in zip(self._margins(), orders, strict=True)]
        corr = cl.latent_correlation(
            total, rows=float(self.cop.rows), scale=cm.SCORE_SCALE**2, steps=steps
        )
        self.cop.corr.copy_(torch.from_numpy(corr))

    def _fit_grid(self, total: np.ndarray, noise_std: float) -> None:
        """Bins at the grids' noisy quantiles, the grids for values within; margins reset."""
        cop = self.cop
        rows, edges, fine = mg.fit_grids(self.columns, total, self.bins, noise_std=noise_std)
        cop.rows.fill_(rows)
        cop.edges.copy_(torch.from_numpy(edges))
        cop.fine.copy_(torch.from_numpy(fine))
        cop.order.copy_(torch.from_numpy(self._public_orders(edges)))
        cop.margin.copy_(torch.from_numpy(mc.uniform_margins(self.sizes)))
        cop.corr.copy_(torch.eye(len(self.sizes), dtype=torch.float64))

    def _fit_margins(self, total: np.ndarray, noise_std: float) -> None:
        """Each column's margin (noisy code counts, Norm-Sub); the reordered columns' order.

        A bin the grid found empty is never drawn (:func:`shared.models.marginal_grid.support`).
        """
        cop = self.cop
        allowed = mg.support(self.columns, cop.fine.cpu().numpy(), cop.edges.cpu().numpy())
        starts = np.cumsum([0, *self.sizes])
        for i, size in enumerate(self.sizes):
            mass = norm_sub(total[starts[i] : starts[i] + size]) * allowed[i]
            total_mass = float(mass.sum())
            p = mass / total_mass if total_mass > 0 else allowed[i] / allowed[i].sum()
            cop.margin[i, :size] = torch.from_numpy(p)
        if self.reordered:
            prior = float(cop.margin[self.target, self._positive()])
            at = int(starts[-1])
            for i in self.reordered:
                size = self.sizes[i]
                count = total[starts[i] : starts[i] + size]
                share = cm.shrunk_share(
                    total[at : at + size], count, prior=prior, noise_std=noise_std
                )
                at += size
                cop.order[i, :size] = torch.from_numpy(np.argsort(share, kind="stable"))
        cop.corr.copy_(torch.eye(len(self.sizes), dtype=torch.float64))

    # -- sampling ------------------------------------------------------------------
    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Latent normals cut at each margin's thresholds, then encoded rows (point values)."""
        rng = self.sampling_rng(generator)
        orders = self._orders()
        cuts = [cm.margin_scores(m, o)[1] for m, o in zip(self._margins(), orders, strict=True)]
        codes = cm.latent_codes(self.cop.corr.cpu().numpy(), cuts, orders, n, rng)
        fine, edges = self.cop.fine.cpu().numpy(), self.cop.edges.cpu().numpy()
        rows = mc.encode_codes(
            self.columns, codes, fine, edges, width=self.transformer.width, rng=rng
        )
        return torch.from_numpy(rows)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the copula, refusing one whose buffers are not a valid fitted model."""
        super().load_state_dict(state)
        if problems := self._damage():
            raise ModelError(
                f"the dp-copula model for schema {self.schema.name!r} is damaged: "
                f"{'; '.join(problems)}. Restore the model folder from the run's original output"
            )

    def _damage(self) -> list[str]:
        cop = self.cop
        corr, fine = cop.corr.cpu().numpy(), cop.fine.cpu().numpy()
        edges = cop.edges.cpu().numpy()
        rows = float(cop.rows)
        problems = []
        if not (np.isfinite(fine).all() and (fine >= 0).all()):
            problems.append("a grid histogram is negative or not finite")
        if not mc.check_edges(self.columns, edges, self.bins):
            problems.append("the bin edges do not rise")
        if not (math.isfinite(rows) and rows >= 0):
            problems.append(f"the row count {rows} is not a count")
        if not all(
            np.isfinite(m).all() and (m >= 0).all() and abs(m.sum() - 1.0) < 1e-6
            for m in self._margins()
        ):
            problems.append("a margin is not a distribution")
        public = self._public_orders(edges) if not problems else None
        for i, (o, size) in enumerate(zip(self._orders(), self.sizes, strict=True)):
            if sorted(o.tolist()) != list(range(size)):
                problems.append(f"column {self.schema.names[i]!r}'s order is not a permutation")
            elif public is not None and i not in self.reordered and (o != public[i, :size]).any():
                problems.append(f"column {self.schema.names[i]!r} is not in its public order")
        if not (np.isfinite(corr).all() and np.allclose(corr, corr.T)):
            problems.append("the correlation matrix is not finite and symmetric")
        elif not (np.allclose(np.diag(corr), 1.0) and _positive_definite(corr)):
            problems.append("the correlation matrix is not a positive-definite correlation")
        return problems


def _positive_definite(corr: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        return False
    return True
