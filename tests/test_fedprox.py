"""FedProx's proximal term: added after clipping and noise, with both clipping paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.ledger import PrivacyLedger
from client.result import RoundResult
from client.settings import SiteSettings
from client.site import run_site_round, update_norm
from client.steppers import GhostStepper, StepConfig
from client.training import train_dp
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings, TrainSettings
from shared.models import GeneratorFamily, build_generator
from shared.schema import Schema
from shared.tables import validate_frame

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "shared" / "data" / "cohort_schema.json"


@pytest.fixture(scope="module")
def frame() -> object:
    raw = generate_cohort(300, seed=3)
    return validate_frame(raw.astype(object).where(raw.notna(), None), cohort_schema())


@pytest.fixture(scope="module")
def rows(frame: object) -> torch.Tensor:
    return torch.from_numpy(build_generator(cohort_schema(), ModelSettings()).encode(frame))


def _trained(rows: torch.Tensor, *, mu: float, clipping: str) -> tuple[dict, dict]:
    torch.manual_seed(0)
    family: GeneratorFamily = build_generator(cohort_schema(), ModelSettings())
    start = {k: v.clone() for k, v in family.state_dict().items()}
    train_dp(
        family,
        rows,
        steps=12,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.2,
        learning_rate=0.05,
        device=torch.device("cpu"),
        seed=5,
        clipping=clipping,
        proximal_mu=mu,
    )
    return start, family.state_dict()


class _OpacusStepGhost(GhostStepper):
    """Reference: the ghost stepper as it was, stepping with Opacus's DPOptimizer.step()."""

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        self.crit(self.private(batch), batch).backward()
        self.opt.step()
        return torch.zeros(())


def test_zero_mu_ghost_step_equals_opacus_own_step(rows: torch.Tensor) -> None:
    # Prepare: two identical models and noise streams; ours splits pre_step / step.
    def stepper(kind: type[GhostStepper]) -> tuple[GeneratorFamily, GhostStepper]:
        torch.manual_seed(0)
        family = build_generator(cohort_schema(), ModelSettings())
        gen = torch.Generator().manual_seed(9)
        cfg = StepConfig(len(rows), 1.0, 1.0, 40, 0.05, gen, False, proximal_mu=0.0)
        return family, kind(family, cfg)

    (ours_f, ours), (ref_f, ref) = stepper(GhostStepper), stepper(_OpacusStepGhost)

    # Execute
    for i in range(4):
        batch = rows[i * 40 : (i + 1) * 40]
        torch.manual_seed(100 + i)  # the VAE's own sampling, same for both
        ours.step(batch)
        torch.manual_seed(100 + i)
        ref.step(batch)
    ours.close()
    ref.close()

    # Assert
    ref_state = ref_f.state_dict()
    assert all(torch.equal(ref_state[k], v) for k, v in ours_f.state_dict().items())


@pytest.mark.parametrize("clipping", ["fused", "ghost"])
def test_positive_mu_pulls_the_weights_toward_the_global_ones(
    rows: torch.Tensor, clipping: str
) -> None:
    start, free = _trained(rows, mu=0.0, clipping=clipping)
    _, pulled = _trained(rows, mu=5.0, clipping=clipping)

    drift_free = update_norm({k: free[k] - start[k] for k in start})
    drift_pulled = update_norm({k: pulled[k] - start[k] for k in start})
    assert drift_pulled < 0.8 * drift_free


def site_round(
    tmp_path: Path, frame: object, *, mu: float, expected_batch: float = 30.0, steps: int = 10
) -> tuple[RoundResult, PrivacyLedger]:
    """One real site round (Opacus, ledger) on ``frame`` from a fixed global model."""
    data = tmp_path / "site.csv"
    frame.to_csv(data, index=False)  # type: ignore[attr-defined]
    torch.manual_seed(0)
    global_state = build_generator(cohort_schema(), ModelSettings()).state_dict()
    site = SiteSettings(
        site_name="site-a",
        data_path=data,
        schema_path=SCHEMA_PATH,
        state_dir=tmp_path / f"state-{mu}-{expected_batch}",
        budget_epsilon=10.0,
        simulation_seed=1,
    )
    train = TrainSettings(
        server_round=1,
        local_steps=steps,
        noise_multiplier=1.2,
        sample_rate=0.1,
        max_grad_norm=1.0,
        learning_rate=0.05,
        update_clip_norm=10.0,
        seed=0,
        schema_fingerprint=Schema.load(SCHEMA_PATH).fingerprint(),
        expected_batch=expected_batch,
        proximal_mu=mu,
    )
    result = run_site_round(site, train, global_state, run="r")
    return result, PrivacyLedger.open(site.ledger_path, site="site-a")


def test_the_ledger_charge_does_not_depend_on_mu(tmp_path: Path, frame: object) -> None:
    # Execute: the same site round, once without and once with the proximal term.
    results, ledgers = zip(*(site_round(tmp_path, frame, mu=mu) for mu in (0.0, 1.0)), strict=True)

    # Assert: same mechanism charged, same ε; a different update was sent.
    assert ledgers[0].history == ledgers[1].history == [(1.2, 0.1, 10)]
    assert results[0].epsilon == pytest.approx(results[1].epsilon)
    assert results[0].update is not None and results[1].update is not None
    assert not all(torch.equal(results[0].update[k], v) for k, v in results[1].update.items())
