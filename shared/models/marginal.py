"""``dp-marginal``: a Chow–Liu tree fitted from noisy 2-way marginals.

The family discretises every column from the public schema alone:
categoricals into their categories (plus a null slot when nullable), numerics
into ``marginal_bins`` equal-width bins on the public bounds (an integer column
with at most that many values gets one bin per value), plus a null bucket when
nullable. A site releases all 2-way contingency tables once, through the
Gaussian mechanism (:mod:`shared.dp_marginals`: m = d(d − 1)/2 tables, L2
sensitivity √m). The server fits a maximum spanning forest on the pairs'
noise-corrected mutual information and stores the forest (``parent``) and its
conditional probability tables (``conditional``, padded to the largest domain)
as buffers, so the model is a ``state_dict`` like every family.

Sampling is ancestral along the forest; a numeric value is drawn uniformly
within its bin (or is the bin's integer). Rows go through the base class as
point distributions, so constraints and conditions are met by bounded redraws
(:mod:`shared.models.sampling`).

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


class _Forest(nn.Module):
    """Buffers only: the forest and its conditional tables (no trained weights)."""

    parent: torch.Tensor
    conditional: torch.Tensor

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        d, k = len(sizes), max(sizes)
        cond = torch.zeros(d, k, k, dtype=torch.float64)
        for c, size in enumerate(sizes):
            cond[c, :, :size] = 1.0 / size  # unfitted: independent uniform columns
        self.register_buffer("parent", torch.full((d,), -1, dtype=torch.int64))
        self.register_buffer("conditional", cond)


@register_family("dp-marginal")
class MarginalGenerator(ReleaseFamily):
    """Chow–Liu forest over discretised columns, fitted from noisy pair tables."""

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
        return _Forest(self.sizes)

    # -- release -------------------------------------------------------------------
    def release_length(self) -> int:
        """Cells of all pair tables."""
        return dm.release_length(self.sizes)

    def release_sensitivity(self) -> float:
        """√m for the m = d(d − 1)/2 pair tables."""
        return dm.release_sensitivity(len(dm.pair_list(len(self.sizes))))

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

    def statistics(self, rows: np.ndarray) -> np.ndarray:
        """Exact pair tables of the rows' codes, concatenated."""
        return dm.pair_tables(self.codes(rows), self.sizes)

    def fit_release(self, total: np.ndarray, *, noise_std: float) -> None:
        """Fit the forest and its conditional tables from the summed pair tables."""
        total = np.asarray(total, dtype=np.float64)
        if total.shape != (self.release_length(),):
            raise ModelError(
                f"release has shape {total.shape}, expected ({self.release_length()},) for "
                f"schema {self.schema.name!r} with marginal-bins {self.settings.marginal_bins}; "
                "every site must use the same schema and settings"
            )
        parent, _, conditionals = dm.fit_tree(
            total, self.sizes, noise_std=noise_std, root=self.root
        )
        cond = torch.zeros_like(self.module.conditional)
        for c, table in enumerate(conditionals):
            cond[c, : table.shape[0], : table.shape[1]] = torch.from_numpy(table)
        self.module.parent.copy_(torch.from_numpy(parent))
        self.module.conditional.copy_(cond)

    # -- sampling ------------------------------------------------------------------
    def sample_encoded(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Ancestral sampling along the forest, then encoded rows (point values)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        parent = self.module.parent.cpu().numpy()
        cond = self.module.conditional.cpu().numpy()
        codes = np.zeros((n, len(self.sizes)), dtype=np.int64)
        for c in dm.topological_order(parent).tolist():
            given = codes[:, parent[c]] if parent[c] >= 0 else np.zeros(n, dtype=np.int64)
            cdf = np.cumsum(cond[c][given, : self.sizes[c]], axis=1)
            u = rng.random(n)[:, None] * cdf[:, -1:]
            codes[:, c] = np.minimum((u >= cdf).sum(axis=1), self.sizes[c] - 1)
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
        """Load the forest, refusing one that is not a forest or not a distribution."""
        super().load_state_dict(state)
        parent = self.module.parent.cpu().numpy()
        cond = self.module.conditional.cpu().numpy()
        try:
            dm.topological_order(parent)
            ok = bool(np.isfinite(cond).all() and (cond >= 0).all())
        except ValueError:
            ok = False
        if ok:
            for c, size in enumerate(self.sizes):
                rows = self.sizes[parent[c]] if parent[c] >= 0 else 1
                ok = ok and bool(np.allclose(cond[c, :rows, :size].sum(axis=1), 1.0, atol=1e-6))
        if not ok:
            raise ModelError(
                f"the dp-marginal model for schema {self.schema.name!r} is damaged (its parents "
                "are not a forest or a conditional table is not a distribution); restore the "
                "model folder from the run's original output"
            )
