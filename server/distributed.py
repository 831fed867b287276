"""The server's side of noise placement ``distributed``: DP-SGD steps over Flower messages.

Every Flower round runs ``local_steps`` central DP-SGD steps (``S``). Each step is
one secure aggregation round of four message stages (:mod:`server.secagg_stages`, with
fresh keys every step):

1. ``train.secagg_setup`` and 2. ``train.secagg_share_keys``: as for ``local``;
3. ``train.distdp_step``: θ and the step's public settings
   (:class:`shared.config.DistributedStepSettings`); each site charges its ledger
   and answers with its masked noisy integer share (:mod:`client.distributed`);
4. ``train.secagg_unmask``: as for ``local``.

The server decodes the sum (:class:`shared.distdp.encoding.ModularCodec`), divides
it by the public expected batch q × announced rows, and takes its Adam step.
Stages are not pipelined across steps: a step's keys are drawn only after the
previous step is unmasked, which keeps the protocol exactly the audited one (one
fresh key set per aggregated vector) at the price of 4 round trips per step.

The step's settings travel with its key set-up, so a site that could not afford
the step refuses there; if fewer than K sites (or ``min_sites``) accept, the run
stops before any site computes or is charged. A step in which fewer than K shares
arrive later (a site lost after the set-up) is aborted *before* unmasking (its sum
would carry less than the planned noise); the sites that sent a share have already
charged that step, and the run stops with :class:`RoundFailedError`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from server.errors import RoundFailedError
from server.secagg_stages import (
    SPENT_SITE_ADVICE,
    SecureRoundInfo,
    open_round,
    require_noise_shares,
    sample_index,
)
from server.strategy import SiteAveraging, StateDict
from shared import keys
from shared.config import DistributedStepSettings, RunSettings
from shared.distdp.encoding import ModularCodec
from shared.distdp.step import parameter_count
from shared.errors import ModelError
from shared.manifest import atomic_write_bytes, load_state, save_state
from shared.models import GeneratorFamily
from shared.secagg import (
    SecAggAbortedError,
    SecAggError,
    SetupRefusedError,
    required_threshold,
)

log = logging.getLogger("fedsynth.server")
FloatVector = npt.NDArray[np.float64]
MOMENTS_FILE = "distributed-adam.pt"  # beside the round checkpoints
MOMENTS_RECORD = "distributed-adam.json"


def secure_step(
    grid: Grid,
    strategy: SiteAveraging,
    step: DistributedStepSettings,
    state: StateDict,
    codec: ModularCodec,
    *,
    secagg_threshold: int,
    timeout: float,
) -> tuple[FloatVector, SecureRoundInfo]:
    """One distributed DP-SGD step over Flower: the decoded sum of the sites' shares.

    Raises
    ------
    RoundFailedError
        Fewer than K shares (or than the secagg threshold) arrived, or the sum sits
        near the wrap point: nothing was unmasked or applied.
    """
    rnd = step.train.server_round
    index = sample_index(grid, strategy.min_sites)
    config = ConfigRecord(step.to_config())  # type: ignore[arg-type]
    try:
        opened = open_round(
            grid,
            index,
            threshold=required_threshold(len(index), secagg_threshold),
            codec=codec.ring,
            label=f"distdp|step={step.step}",
            params={},
            timeout=timeout,
            announce=(keys.DISTDP_STEP, {keys.TRAIN_CONFIG: config}),
            min_accepted=max(strategy.min_sites, step.noise_sites),
        )
        compute = RecordDict(
            {
                keys.GLOBAL_ARRAYS: ArrayRecord(state),
                keys.TRAIN_CONFIG: config,
                keys.SECAGG: opened.peers_record(),
            }
        )
        replies = opened.send_inputs(grid, keys.DISTDP_STEP, compute, timeout)
        parsed = strategy.parse_replies(rnd, replies.values(), masked=True)
        survivors = opened.proto.collect_masked(
            {index[r.node_id]: r.masked for r in parsed if r.masked is not None}
        )
        declined = "; ".join(f"{r.site}: {r.reason}" for r in parsed if not r.trained)
        require_noise_shares(len(survivors), step.noise_sites, what="step", declined=declined)
        strategy.check_quorum(rnd, parsed, len(survivors))
        total = codec.decode(opened.unmask(grid, survivors, timeout))
    except SetupRefusedError as exc:
        raise RoundFailedError(
            f"round {rnd}, DP-SGD step {step.step} stopped at the key set-up: {exc}. No site "
            f"computed a share or was charged for it. {SPENT_SITE_ADVICE}"
        ) from exc
    except SecAggAbortedError as exc:
        raise RoundFailedError(
            f"round {rnd}, DP-SGD step {step.step} aborted under secure aggregation: {exc}. "
            "Nothing was unmasked or applied; every site that sent its share keeps this step's "
            "ε charge in its ledger. Bring the sites back and rerun with the same --out to "
            "resume from the last checkpoint."
        ) from exc
    except SecAggError as exc:
        raise RoundFailedError(
            f"round {rnd}, DP-SGD step {step.step}: secure aggregation failed: {exc}"
        ) from exc
    info = SecureRoundInfo(
        opened.threshold,
        len(index),
        len(survivors),
        opened.dropped(survivors),
        codec.grid,
        opened.declines({r.site: r.reason for r in parsed if not r.trained}),
    )
    return total, info


class DistributedTrainer:
    """The server's optimiser for ``distributed``: σ from the plan, Adam on the sums.

    Parameters
    ----------
    family : GeneratorFamily
        The global generator; its private module is trained in place.
    settings : RunSettings
        With ``noise_placement == "distributed"`` (validated by :meth:`RunSettings.distributed_plan`).
    schema_fingerprint : str
        Sent with every step; sites refuse a different schema.
    """

    def __init__(
        self,
        family: GeneratorFamily,
        settings: RunSettings,
        schema_fingerprint: str,
        *,
        moments_dir: Path | None = None,
        resume_round: int = 0,
    ) -> None:
        self.family, self.settings, self.fingerprint = family, settings, schema_fingerprint
        self.plan = settings.distributed_plan()
        self.module = family.private_module()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.dim = parameter_count(self.module)
        self.sigma = self.plan.sigma(self.dim)
        self.codec = ModularCodec(grid=self.plan.grid)
        # A sum is at most (batch)·C plus the noise; allow 4× the expected batch and 20σ.
        bound = (4 * self.plan.expected_batch + 64 + 20 * self.sigma) * self.plan.clip_norm
        self.codec.check_headroom(bound=bound)
        # Adam's moments are post-processing of released sums (public); they are saved
        # beside the checkpoints so a resumed run continues with them.
        self.optimizer = torch.optim.Adam(self.params, lr=self.plan.learning_rate)
        self.moments_dir = moments_dir
        if moments_dir is not None and resume_round > 0:
            self.load_moments(moments_dir, resume_round)

    def run_round(
        self, grid: Grid, strategy: SiteAveraging, rnd: int, state: StateDict
    ) -> tuple[StateDict, dict[str, Any]]:
        """Run the round's S steps from ``state``; returns the update and the round's facts."""
        self.family.load_state_dict(state)
        steps = self.settings.local_steps
        train = self.settings.train_settings(
            rnd, noise_multiplier=self.sigma, schema_fingerprint=self.fingerprint
        )
        infos: list[SecureRoundInfo] = []
        seconds: list[float] = []
        for k in range(steps):
            t0 = time.perf_counter()
            step = DistributedStepSettings(
                train=train,
                step=(rnd - 1) * steps + k + 1,
                noise_sites=self.plan.noise_sites,
                grid_bits=self.plan.grid_bits,
                modulus_bits=self.codec.modulus_bits,
            )
            total, info = secure_step(
                grid,
                strategy,
                step,
                self.family.state_dict(),
                self.codec,
                secagg_threshold=self.settings.secagg_threshold,
                timeout=self.settings.round_timeout,
            )
            self.apply(total)
            infos.append(info)
            seconds.append(time.perf_counter() - t0)
        if self.moments_dir is not None:
            self.save_moments(self.moments_dir, rnd)
        new = self.family.state_dict()
        facts = {
            "secure_aggregation": {
                **infos[-1].as_dict(),
                "survivors": min(i.survivors for i in infos),
                "dropped_after_key_sharing": sum(i.dropped_after_key_sharing for i in infos),
            },
            # Every step's declines (a site may decline one step and not the next).
            "declines": {k: v for i in infos for k, v in i.declines.items()},
            "distributed": {
                "steps": steps,
                "seconds_per_step": round(sum(seconds) / steps, 3),
                "message_stages_per_step": 4,
            },
        }
        log.info(
            "round %d: %d distributed DP-SGD step(s), %.2fs per step over Flower",
            rnd,
            steps,
            sum(seconds) / steps,
        )
        return {k: new[k] - state[k].to(new[k].dtype) for k in state}, facts

    def apply(self, total: FloatVector) -> None:
        """One Adam step on the decoded sum divided by the public expected batch."""
        flat = torch.from_numpy(total / self.plan.expected_batch).float()
        self.optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in self.params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()

    def save_moments(self, folder: Path, rnd: int) -> None:
        """Write Adam's state after round ``rnd`` (tensors, then the record naming them)."""
        folder.mkdir(parents=True, exist_ok=True)
        flat = {
            f"{i}.{name}": torch.as_tensor(value)
            for i, entry in self.optimizer.state_dict()["state"].items()
            for name, value in entry.items()
        }
        sha = save_state(folder / MOMENTS_FILE, flat)
        record = json.dumps({"round": rnd, "sha256": sha}).encode()
        atomic_write_bytes(folder / MOMENTS_RECORD, record)

    def load_moments(self, folder: Path, rnd: int) -> bool:
        """Restore Adam's state saved after round ``rnd``; False (fresh moments) otherwise."""
        try:
            doc = json.loads((folder / MOMENTS_RECORD).read_text(encoding="utf-8"))
            if int(doc["round"]) != rnd:
                raise ValueError(f"they were saved after round {doc['round']}, not {rnd}")
            flat = load_state(folder / MOMENTS_FILE, str(doc["sha256"]))
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in flat.items():
                index, name = key.split(".", 1)
                state.setdefault(int(index), {})[name] = value
            saved = self.optimizer.state_dict()
            saved["state"] = state
            self.optimizer.load_state_dict(saved)
        except (OSError, ValueError, KeyError, TypeError, ModelError) as exc:
            log.warning("the server's Adam moments are not restored (%s); they restart", exc)
            return False
        return True
