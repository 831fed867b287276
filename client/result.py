"""The outcome of one round at a site (light: no torch import at run time).

Kept apart from :mod:`client.site` so the ClientApp module can be imported without
torch and Opacus: Flower starts a ClientApp process per message, and the protocol-only
messages of secure aggregation do not need either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RoundResult:
    """Outcome of one round at a site.

    ``epsilon`` is the site's cumulative ε over its whole ledger (all runs).
    ``update`` is ``None`` when the site declined.
    """

    trained: bool
    reason: str
    epsilon: float
    steps: int
    total_steps: int
    update: StateDict | None = None
    update_clipped: bool = False
    num_rows: int = 0
    seconds: float = 0.0
