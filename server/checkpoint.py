"""Per-round checkpoints, so a restarted coordinator resumes instead of starting over.

Each round writes ``round-NNNN.pt`` (the global ``state_dict``) and then
``latest.json`` (round, SHA-256 of the weights, the run's identity and the
sites' latest privacy figures), both atomically. A stateful server optimiser
(:mod:`server.optimisers`) adds ``optimiser-NNNN.pt`` (its momentum or moments), so
a resumed run continues exactly. Resuming checks the SHA-256s and that the run
identity (schema, generator, DP and aggregation settings) is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from server.errors import CheckpointError
from shared.errors import ModelError
from shared.manifest import atomic_write_bytes, load_state, save_state

LATEST = "latest.json"


@dataclass(frozen=True)
class Checkpoint:
    """A saved global model after ``round`` aggregated rounds."""

    round: int
    state: dict[str, torch.Tensor]
    sites: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    optimiser: dict[str, torch.Tensor] = field(default_factory=dict)


class CheckpointStore:
    """Checkpoints of one run in ``folder``; ``identity`` must match to resume."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = folder
        self.identity = identity

    def save(
        self,
        rnd: int,
        state: dict[str, torch.Tensor],
        sites: dict[str, dict[str, Any]],
        history: list[dict[str, Any]],
        optimiser: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write round ``rnd`` (weights and optimiser state first, then the pointer)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / f"round-{rnd:04d}.pt"
        digest = save_state(weights, state)
        keep = {weights}
        extra: dict[str, str] = {}
        if optimiser:
            opt_file = self.folder / f"optimiser-{rnd:04d}.pt"
            extra = {
                "optimiser": opt_file.name,
                "optimiser_sha256": save_state(opt_file, optimiser),
            }
            keep.add(opt_file)
        doc = {
            "round": rnd,
            "weights": weights.name,
            "sha256": digest,
            "identity": self.identity,
            "sites": sites,
            "history": history,
            **extra,
        }
        atomic_write_bytes(self.folder / LATEST, json.dumps(doc, indent=1).encode())
        for old in [*self.folder.glob("round-*.pt"), *self.folder.glob("optimiser-*.pt")]:
            if old not in keep:
                old.unlink(missing_ok=True)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint, or ``None`` when the run has none yet.

        Raises
        ------
        CheckpointError
            If the checkpoint is damaged or was written by a different run setup.
        """
        pointer = self.folder / LATEST
        if not pointer.exists():
            return None
        try:
            doc = json.loads(pointer.read_text(encoding="utf-8"))
            rnd, name, digest = int(doc["round"]), str(doc["weights"]), str(doc["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {pointer} is damaged ({exc}); delete the checkpoints folder to start "
                "over (sites keep their ledgers, so spent budget stays spent)"
            ) from None
        if doc.get("identity") != self.identity:
            raise CheckpointError(
                f"checkpoint in {self.folder} was written by a run with different settings or "
                "schema; use a new --out folder, or rerun with the original settings to resume"
            )
        try:
            state = load_state(self.folder / Path(name).name, digest)
            optimiser = (
                load_state(
                    self.folder / Path(str(doc["optimiser"])).name, str(doc["optimiser_sha256"])
                )
                if "optimiser" in doc
                else {}
            )
        except ModelError as exc:
            raise CheckpointError(f"{exc} (checkpoint of round {rnd})") from None
        return Checkpoint(
            rnd, state, dict(doc.get("sites", {})), list(doc.get("history", [])), optimiser
        )
