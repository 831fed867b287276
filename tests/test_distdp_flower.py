"""Noise placement ``distributed`` over real Flower Messages and the real ClientApp.

Three simulated sites run the real ClientApp handlers (real ledgers, real secure
aggregation) behind the in-process transport of :mod:`tests.test_secagg_flower`;
the ServerApp's :func:`run_federation` drives them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from client.distributed import run_site_step
from client.settings import SiteSettings
from server.app import initial_model, run_federation
from server.errors import RoundFailedError
from shared import keys
from shared.config import DistributedStepSettings, RunSettings
from shared.distdp.accounting import accounting_multiplier
from shared.distdp.step import parameter_count
from shared.errors import ConfigError
from shared.schema import Schema
from tests.e2e import independent_epsilon
from tests.test_secagg_flower import SITES, InProcessGrid, make_run

DIST = {
    "secure-aggregation": True,
    "noise-placement": "distributed",
    "min-sites": SITES,
    "announced-rows": 600,
    "local-steps": 2,
}


class StepGrid(InProcessGrid):
    """The in-process transport, with the distributed step as the third stage."""

    def _gone(self, nid: int, action: str) -> bool:
        return super()._gone(nid, keys.SECAGG_TRAIN if action == keys.DISTDP_STEP else action)


@pytest.fixture(autouse=True, scope="module")
def _task_identity() -> Iterator[None]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 101
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def sites_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_secagg_flower import sites_template as make

    return make.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined,no-any-return]


def _ledger(run: Path, i: int) -> dict[str, Any]:
    return dict(
        json.loads((run / "sites" / f"site-{i}" / "state" / "privacy_ledger.json").read_text())
    )


def _dim(settings: RunSettings) -> int:
    schema = Schema.load(settings.schema_path)
    return parameter_count(initial_model(schema, settings).private_module())


@pytest.mark.slow  # a whole federation in process: ~20-40 s on a shared core
def test_distributed_run_charges_each_step_and_reports_the_plan(
    sites_template: Path, tmp_path: Path
) -> None:
    settings, cfg = make_run(sites_template, tmp_path / "run", **DIST)
    grid = InProcessGrid(cfg)
    out = run_federation(grid, settings)

    dim, plan = _dim(settings), settings.distributed_plan()
    report = json.loads((out / "privacy_report.json").read_text())
    facts = report["distributed"]
    assert report["run"]["noise_placement"] == "distributed"
    assert facts["epsilon_against_server"] == pytest.approx(plan.epsilon_at(dim=dim, colluders=0))
    assert facts["largest_tolerated_collusion"] == 1  # K = 3, majority threshold 2
    assert facts["epsilon_at_largest_collusion"] == pytest.approx(
        plan.epsilon_at(dim=dim, colluders=1)
    )
    assert facts["epsilon_at_largest_collusion"] > facts["epsilon_against_server"]
    assert facts["epsilon_against_server"] <= settings.epsilon
    md = (out / "privacy_report.md").read_text()
    assert "## Distributed DP-SGD: guarantee and trust assumptions" in md
    assert "only if secure aggregation holds" in md

    multiplier = accounting_multiplier(
        sigma=plan.sigma(dim), clip_norm=1.0, grid=plan.grid, dim=dim, sites=SITES
    )
    for i in range(SITES):
        entries = _ledger(tmp_path / "run", i)["entries"]
        assert [(e["steps"], e["sample_rate"]) for e in entries] == [(1, 0.1)] * 2
        assert all(e["noise_multiplier"] == pytest.approx(multiplier) for e in entries)
        site = next(s for s in report["sites"] if s["site"] == f"site-{i}")
        assert site["steps"] == 2 and site["noise_multiplier"] == pytest.approx(multiplier)
        # Two steps at (σC/Δ, q): the plan's ε at t = 0 for 2 steps, by Opacus directly.
        assert site["epsilon"] == pytest.approx(
            independent_epsilon([(multiplier, 0.1, 2)], settings.delta), rel=1e-6
        )
    # 2 steps × 4 stages, and the server only ever saw masked vectors.
    assert len(grid.received[keys.DISTDP_STEP]) == 2 * SITES
    for reply in grid.received[keys.DISTDP_STEP]:
        assert set(reply.content.keys()) == set(keys.SECAGG_REPLY_FIELDS)
    assert report["round_history"][0]["distributed"]["steps"] == 2
    assert (out / "checkpoints" / "distributed-adam.pt").exists()


@pytest.mark.slow  # a whole federation in process: ~20-40 s on a shared core
def test_a_missing_share_aborts_before_unmasking_and_the_senders_stay_charged(
    sites_template: Path, tmp_path: Path
) -> None:
    settings, cfg = make_run(sites_template, tmp_path / "run", **DIST)
    grid = StepGrid(cfg, silent={keys.SECAGG_TRAIN: {101}})
    with pytest.raises(
        RoundFailedError, match=r"only 2 of the K = 3 noise shares.*keeps this step"
    ):
        run_federation(grid, settings)
    assert keys.SECAGG_UNMASK not in grid.received
    assert len(_ledger(tmp_path / "run", 1)["entries"]) == 1
    assert len(_ledger(tmp_path / "run", 2)["entries"]) == 1


@pytest.mark.slow  # a whole federation in process
def test_sites_compute_nothing_when_fewer_than_k_peers_shared_keys(
    sites_template: Path, tmp_path: Path
) -> None:
    settings, cfg = make_run(sites_template, tmp_path / "run", **DIST)
    grid = StepGrid(cfg, silent={keys.SECAGG_SHARE_KEYS: {101}})
    with pytest.raises(RoundFailedError, match="DP-SGD step 1"):
        run_federation(grid, settings)
    replies = grid.received[keys.DISTDP_STEP]
    assert len(replies) == 2
    assert all(r.has_error() and "fewer than the K = 3" in r.error.reason for r in replies)
    for i in (1, 2):
        path = tmp_path / "run" / "sites" / f"site-{i}" / "state" / "privacy_ledger.json"
        assert not path.exists() or _ledger(tmp_path / "run", i)["entries"] == []


def _site_and_step(
    run: Path, settings: RunSettings, **site: Any
) -> tuple[SiteSettings, DistributedStepSettings, dict[str, torch.Tensor]]:
    schema = Schema.load(settings.schema_path)
    family = initial_model(schema, settings)
    plan = settings.distributed_plan()
    dim = parameter_count(family.private_module())
    step = DistributedStepSettings(
        train=settings.train_settings(
            1, noise_multiplier=plan.sigma(dim), schema_fingerprint=schema.fingerprint()
        ),
        step=1,
        noise_sites=SITES,
        grid_bits=plan.grid_bits,
        modulus_bits=48,
    )
    s = SiteSettings(
        site_name="site-0",
        data_path=run / "sites" / "site-0" / "data.csv",
        schema_path=Path(settings.schema_path),
        state_dir=run / "sites" / "site-0" / "state",
        budget_epsilon=site.get("budget", settings.epsilon),
        simulation_seed=None,
    )
    return s, step, family.state_dict()


def test_a_step_asked_again_is_computed_afresh_and_charged_again(
    sites_template: Path, tmp_path: Path
) -> None:
    """A share is never re-sent into a new secure sum (see client.distributed): over-count."""
    settings, _ = make_run(sites_template, tmp_path / "run", **DIST)
    site, step, state = _site_and_step(tmp_path / "run", settings)
    first, share1, multiplier = run_site_step(site, step, state, run="r")
    again, share2, _ = run_site_step(site, step, state, run="r")
    assert first.trained and again.trained and share1 is not None and share2 is not None
    assert not np.array_equal(share1, share2)  # fresh secret noise
    assert (first.total_steps, again.total_steps) == (1, 2)
    assert again.epsilon == pytest.approx(
        independent_epsilon([(multiplier, 0.1, 2)], settings.delta), rel=1e-6
    )


def test_a_step_beyond_the_budget_is_refused_uncharged(
    sites_template: Path, tmp_path: Path
) -> None:
    settings, _ = make_run(sites_template, tmp_path / "run", **DIST)
    site, step, state = _site_and_step(tmp_path / "run", settings, budget=0.01)
    result, share, _ = run_site_step(site, step, state, run="r")
    assert not result.trained and share is None
    assert "would raise its cumulative ε" in result.reason
    assert (
        not site.ledger_path.exists() or json.loads(site.ledger_path.read_text())["entries"] == []
    )


def _cfg(**extra: Any) -> dict[str, Any]:
    return {"schema-path": "/s.json", "out-dir": "/o", **DIST, **extra}


def test_distributed_without_secure_aggregation_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'distributed' needs secure aggregation"):
        RunSettings.from_run_config(_cfg(**{"secure-aggregation": False}))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"announced-rows": 0}, r"announced total row count"),
        ({"accountant": "prv"}, r"RDP only"),
        ({"min-sites": 1}, r"raise min-sites"),
        ({"numeric-encoder": "dp-quantile"}, r"cannot also spend budget.*--numeric-encoder minmax"),
        ({"aggregation": "fedadam"}, r"own server-side Adam step.*--aggregation fedavg"),
        ({"noise-placement": "central"}, r"'noise-placement'.*one of \['local', 'distributed'\]"),
    ],
)
def test_distributed_settings_are_checked(extra: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunSettings.from_run_config(_cfg(**extra))


def test_step_settings_round_trip_through_the_flower_config() -> None:
    settings = RunSettings.from_run_config(_cfg())
    step = DistributedStepSettings(
        train=settings.train_settings(2, noise_multiplier=1.5, schema_fingerprint="ab"),
        step=7,
        noise_sites=3,
        grid_bits=16,
        modulus_bits=48,
    )
    assert DistributedStepSettings.from_config(step.to_config()) == step
    assert step.grid == 2.0**-16


@pytest.mark.parametrize("command", [["simulate"], ["server", "--schema", "s.json", "--out", "o"]])
def test_the_cli_passes_the_placement_to_the_run_config(command: list[str]) -> None:
    from fedsynth.cli import build_parser
    from shared.cli_options import run_overrides

    flags = ["--noise-placement", "distributed", "--announced-rows", "900"]
    overrides = run_overrides(build_parser().parse_args([*command, *flags]))
    assert overrides["noise-placement"] == "distributed" and overrides["announced-rows"] == 900
    assert run_overrides(build_parser().parse_args(command))["noise-placement"] == "local"


def test_the_report_states_epsilon_per_collusion_level_and_the_trust() -> None:
    from server.report import build_report, render_markdown
    from server.report_facts import distributed_facts

    settings = RunSettings.from_run_config(_cfg(**{"min-sites": 5, "rounds": 3}))
    plan = settings.distributed_plan()
    report = build_report(settings, {}, 0, "dp-vae", plan.sigma(1000), [])
    report["distributed"] = distributed_facts(settings, dim=1000)
    facts = report["distributed"]
    assert (facts["noise_sites"], facts["secagg_threshold"]) == (5, 3)
    assert facts["largest_tolerated_collusion"] == 2
    assert facts["epsilon_against_server"] == pytest.approx(plan.epsilon_at(dim=1000, colluders=0))
    assert facts["epsilon_at_largest_collusion"] == pytest.approx(
        plan.epsilon_at(dim=1000, colluders=2)
    )
    md = render_markdown(report)
    assert f"ε = {facts['epsilon_at_largest_collusion']:.3f}" in md
    assert "no more than 2 site(s)" in md and "aborted before unmasking" in md
    assert "noise placement: distributed" in md and "update clip norm" not in md


@pytest.mark.slow  # a federation in process
@pytest.mark.usefixtures("_no_plan_check")  # the plan would refuse first; see test_run_plan
def test_a_site_out_of_budget_stops_the_step_at_its_key_set_up_uncharged(
    sites_template: Path, tmp_path: Path
) -> None:
    # Prepare: site-0 already spent its budget in an earlier run.
    from client.ledger import PrivacyLedger

    settings, cfg = make_run(sites_template, tmp_path / "run", **DIST)
    run = tmp_path / "run"
    led = run / "sites" / "site-0" / "state"
    PrivacyLedger.open(led / "privacy_ledger.json", site="site-0").record(
        run="old", server_round=1, noise_multiplier=0.5, sample_rate=0.5, steps=50, max_grad_norm=1
    )

    # Execute: the step's settings travel with its key set-up.
    with pytest.raises(RoundFailedError) as failed:
        run_federation(InProcessGrid(cfg), settings)

    # Assert: site-0 refused the set-up, so the step stopped before any site computed.
    message = str(failed.value)
    assert "DP-SGD step 1 stopped at the key set-up" in message
    assert re.search(r"only 2 of 3 site\(s\) accepted.*site 'site-0' declines", message)
    assert "No site computed a share or was charged" in message and "sites remove NAME" in message
    assert len(_ledger(run, 0)["entries"]) == 1  # its old entry only
    for i in (1, 2):
        path = run / "sites" / f"site-{i}" / "state" / "privacy_ledger.json"
        assert not path.exists() or _ledger(run, i)["entries"] == []


def test_simulate_refuses_distributed_without_secure_aggregation_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedsynth.cli import main

    out = tmp_path / "out"
    assert main(["simulate", "--noise-placement", "distributed", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'distributed' needs secure aggregation" in err and "--secure-aggregation" in err
    assert not out.exists()


def test_the_servers_adam_moments_survive_a_resume(tmp_path: Path) -> None:
    from server.distributed import DistributedTrainer
    from shared.cohort import cohort_schema
    from shared.models import build_generator

    settings = RunSettings.from_run_config(_cfg())
    family = build_generator(cohort_schema(), settings.model)
    first = DistributedTrainer(family, settings, "fp", moments_dir=tmp_path)
    first.apply(np.random.default_rng(0).normal(size=first.dim) * 50.0)
    first.save_moments(tmp_path, 1)
    before = first.optimizer.state_dict()["state"]

    resumed = DistributedTrainer(family, settings, "fp", moments_dir=tmp_path, resume_round=1)
    after = resumed.optimizer.state_dict()["state"]
    assert set(after) == set(before) and len(after) == len(first.params)
    for i, entry in before.items():
        for name, value in entry.items():
            torch.testing.assert_close(after[i][name], value)
    # Moments saved after another round are not used (the run resumed elsewhere).
    stale = DistributedTrainer(family, settings, "fp", moments_dir=tmp_path, resume_round=2)
    assert stale.optimizer.state_dict()["state"] == {}
