"""CTGAN's conditional vectors, drawn from the public schema only (``"dp-ctgan"``).

A conditional vector picks one categorical column and one of its categories
("training by sampling", Xu et al. 2019). CTGAN draws the category by its (log)
frequency in the data, an unaccounted release; here the frequencies come from
the public schema (uniform over the declared categories), and a real row's
vector holds its own value, which DP-SGD covers like every other feature. See
:mod:`shared.models.gan` for the privacy design.
"""

from __future__ import annotations

import torch

from shared.schema import Schema
from shared.transforms import TableTransformer


def public_category_frequencies(schema: Schema) -> list[torch.Tensor]:
    """Category frequencies of each categorical column, from the public schema only.

    Uniform over the schema's categories (plus the "missing" slot when nullable):
    the schema declares no frequencies, and the site's own counts are private.
    """
    out = []
    for span in TableTransformer(schema).spans:
        if span.kind == "categorical":
            out.append(torch.full((span.width,), 1.0 / span.width))
    return out


class CondSampler:
    """Draws CTGAN conditional vectors from public frequencies.

    The vector concatenates one slot per category of every categorical column;
    at most one slot is 1. ``column == -1`` means no condition (all zeros).

    Parameters
    ----------
    schema : Schema
        The public schema.
    uncond_rate : float
        Probability of the empty condition.
    """

    def __init__(self, schema: Schema, *, uncond_rate: float) -> None:
        self.spans = [s for s in TableTransformer(schema).spans if s.kind == "categorical"]
        self.frequencies = public_category_frequencies(schema)
        self.offsets = [sum(s.width for s in self.spans[:i]) for i in range(len(self.spans))]
        self.width = sum(s.width for s in self.spans)
        self.uncond_rate = uncond_rate if self.spans else 1.0

    def columns(self, n: int, device: torch.device) -> torch.Tensor:
        """Chosen column per row (``-1``: none), uniform over the categorical columns."""
        col = torch.randint(0, max(len(self.spans), 1), (n,), device=device)
        none = torch.rand(n, device=device) < self.uncond_rate
        return col.masked_fill(none, -1)

    def fake(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cond, column, category)`` for ``n`` fake rows; category is -1 with no column."""
        col = self.columns(n, device)
        cat = torch.full((n,), -1, dtype=torch.long, device=device)
        cond = torch.zeros(n, self.width, device=device)
        for c, freq in enumerate(self.frequencies):
            rows = torch.nonzero(col == c).squeeze(1)
            if rows.numel():
                draw = torch.multinomial(freq.to(device), rows.numel(), replacement=True)
                cat[rows] = draw
                cond[rows, self.offsets[c] + draw] = 1.0
        return cond, col, cat

    def real(self, rows: torch.Tensor) -> torch.Tensor:
        """Conditional vectors for real rows: a public column choice, the row's own value."""
        col = self.columns(rows.shape[0], rows.device)
        cond = torch.zeros(rows.shape[0], self.width, device=rows.device)
        for c, span in enumerate(self.spans):
            keep = (col == c).unsqueeze(1).to(rows.dtype)
            block = rows[:, span.start : span.stop] * keep
            cond[:, self.offsets[c] : self.offsets[c] + span.width] = block
        return cond
