"""Model updates as flat float vectors (the unit secure aggregation sums), and back."""

from __future__ import annotations

import numpy as np
import torch

from shared.secagg.encoding import FloatVector

StateDict = dict[str, torch.Tensor]


def flatten_state(update: StateDict) -> FloatVector:
    """All parameters, in sorted name order, as one float64 vector."""
    parts = [update[k].detach().cpu().double().reshape(-1).numpy() for k in sorted(update)]
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten_state(vector: FloatVector, like: StateDict) -> StateDict:
    """Inverse of :func:`flatten_state`, with the shapes of ``like`` (float32 tensors).

    Raises
    ------
    ValueError
        If the vector's length does not match the model's parameter count.
    """
    sizes = [like[k].numel() for k in sorted(like)]
    if len(vector) != sum(sizes):
        raise ValueError(
            f"vector of length {len(vector)} does not match the model's {sum(sizes)} parameters"
        )
    out: StateDict = {}
    start = 0
    for k, n in zip(sorted(like), sizes, strict=True):
        chunk = np.ascontiguousarray(vector[start : start + n], dtype=np.float32)
        out[k] = torch.from_numpy(chunk).reshape(like[k].shape)
        start += n
    return out
