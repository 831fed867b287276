"""Poisson batch sampling for DP-SGD, vectorised.

Each step, every row joins the batch independently with probability q. This is
the sampling that the RDP and PRV accountants (and Opacus's ``DPDataLoader``)
assume, so accounting is unchanged; only the mechanics are faster: one vector
of uniforms and one fancy-indexing gather per step instead of a Python call
per row. The rows may be a ``torch.Tensor`` or a NumPy array, including a
read-only ``np.memmap`` of a table encoded on disk (see
:mod:`shared.streaming`), so a large site never holds its table in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from client.errors import TrainingError

Rows = torch.Tensor | np.ndarray


class PoissonBatches:
    """Draw Poisson-sampled batches of rows.

    Parameters
    ----------
    rows : torch.Tensor or numpy.ndarray
        Encoded rows, shape ``(n, width)``, float32.
    sample_rate : float
        q: probability that a row joins a given batch, in (0, 1].
    generator : torch.Generator
        Source of the sampling randomness (a CPU generator; a secure one in
        Opacus's secure mode).
    """

    def __init__(self, rows: Rows, *, sample_rate: float, generator: torch.Generator) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise TrainingError(f"sample rate q must be in (0, 1], got {sample_rate}")
        if rows.ndim != 2:
            raise TrainingError(f"rows must be a 2-D table of encoded rows, got {rows.ndim}-D")
        self.rows, self.sample_rate, self.generator = rows, sample_rate, generator
        self.n = int(rows.shape[0])
        self._uniform = torch.empty(self.n)

    def indices(self) -> torch.Tensor:
        """Indices (sorted, possibly none) of the rows in the next batch."""
        self._uniform.uniform_(generator=self.generator)
        return torch.nonzero(self._uniform < self.sample_rate).squeeze(1)

    def next_batch(self) -> torch.Tensor:
        """The next batch as a float32 CPU tensor of shape ``(k, width)``, k ~ Binomial(n, q)."""
        idx = self.indices()
        if isinstance(self.rows, torch.Tensor):
            return self.rows.index_select(0, idx)
        # Sorted indices read a memory-mapped file front to back.
        return torch.from_numpy(np.ascontiguousarray(self.rows[idx.numpy()], dtype=np.float32))
