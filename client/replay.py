"""The last update a site sent, kept so a restarted coordinator does not cost it twice.

When the coordinator crashes after a site trained (and charged its ledger) but
before the round was aggregated and checkpointed, the restarted coordinator
resumes from its last checkpoint and asks for the *same* round again: the same
round config and the same global weights. Training again would charge the
ledger a second time for a round that was never aggregated.

Instead the site keeps, beside its ledger, the last update it released and the
request it answered (SHA-256 of the round config and of the global weights).
A request identical to that one is answered with the stored update and no new
charge: re-sending an output that was already released is post-processing and
costs no privacy (Dwork & Roth 2014, Prop. 2.1). Any difference in the request
(another round, other weights, other DP settings) trains and charges as usual.

The record is written after the ledger (never before), so a crash in between
can only make the site charge again (over-count), never send an uncharged
update. A damaged record is ignored with a warning, with the same effect.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from client.precheck import REPLAY_RECORD as RECORD
from shared.config import TrainSettings
from shared.errors import ModelError
from shared.manifest import atomic_write_bytes, load_state, save_state

log = logging.getLogger("fedsynth.client")
StateDict = dict[str, torch.Tensor]
WEIGHTS = "last_update.pt"


def request_digest(train: TrainSettings, global_state: StateDict) -> str:
    """SHA-256 identifying a round request: its config and the global weights."""
    digest = hashlib.sha256(json.dumps(train.to_config(), sort_keys=True).encode())
    for name in sorted(global_state):
        tensor = global_state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class SentUpdate:
    """An update already released for the request ``digest``."""

    digest: str
    update: StateDict
    clipped: bool
    steps: int
    config: str = ""  # shared.run_plan.train_config_digest of the round it answered


class ReplayStore:
    """The last released update of one site, in its state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.record, self.weights = state_dir / RECORD, state_dir / WEIGHTS

    def find(self, digest: str) -> SentUpdate | None:
        """The stored update if it answered exactly the request ``digest``."""
        if not self.record.exists():
            return None
        try:
            doc = json.loads(self.record.read_text(encoding="utf-8"))
            if doc["request"] != digest:
                return None
            update = load_state(self.weights, str(doc["sha256"]))
            return SentUpdate(digest, update, bool(doc["clipped"]), int(doc["steps"]))
        except (OSError, ValueError, KeyError, TypeError, ModelError) as exc:
            log.warning(
                "the record of the last sent update (%s) is unusable (%s); the round is trained "
                "and charged again",
                self.record,
                exc,
            )
            return None

    def save(self, sent: SentUpdate) -> None:
        """Remember ``sent`` (weights first, then the record pointing at them)."""
        sha = save_state(self.weights, sent.update)
        doc = {
            "request": sent.digest,
            "config": sent.config,
            "sha256": sha,
            "clipped": sent.clipped,
            "steps": sent.steps,
        }
        atomic_write_bytes(self.record, json.dumps(doc).encode())
