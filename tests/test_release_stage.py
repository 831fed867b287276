"""A release family's Flower stages: request, site release, server fit and resume, budget."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.errors import SiteConfigError
from client.ledger import PrivacyLedger
from client.release_stage import exact_statistics, handle_release, release_statistics
from client.settings import SiteSettings
from server.errors import CheckpointError
from server.release_stages import RELEASE_FILE, fit_release_stages, stage_request
from shared import keys
from shared.accounting import epsilon_of
from shared.cohort import generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.config_model import RELEASE_GENERATORS
from shared.errors import ConfigError
from shared.models import available_families, build_generator
from shared.models.base import _REGISTRY
from shared.models.marginal import MarginalGenerator
from shared.models.release import ReleaseFamily, release_stage_noise
from shared.release_request import ReleaseRequest
from shared.schema import Schema
from simulations.placement_release import local_total

MARGINAL = ModelSettings(generator="dp-marginal")


def marginal(schema: Schema) -> MarginalGenerator:
    family = build_generator(schema, MARGINAL)
    assert isinstance(family, MarginalGenerator)
    return family


def run_settings(tmp_path: Path, **kw: Any) -> RunSettings:
    # ε = 1 by default: the sites below hold ε = 1.
    base: dict[str, Any] = {"schema-path": "s.json", "out-dir": str(tmp_path), "epsilon": 1.0}
    base["generator"] = "dp-marginal"
    return RunSettings.from_run_config({**base, **kw})


@pytest.fixture
def site(tmp_path: Path, cohort: Schema) -> SiteSettings:
    cohort.save(tmp_path / "schema.json")
    generate_cohort(200, seed=4).to_csv(tmp_path / "site.csv", index=False)
    return SiteSettings(
        site_name="h1",
        data_path=tmp_path / "site.csv",
        schema_path=tmp_path / "schema.json",
        state_dir=tmp_path / "state",
        budget_epsilon=1.0,
    )


# ---------------------------------------------------------------------- settings
def test_the_config_knows_every_release_family_without_importing_it() -> None:
    registered = {f for f in available_families() if issubclass(_REGISTRY[f], ReleaseFamily)}
    assert set(RELEASE_GENERATORS) == registered == {"dp-marginal", "dp-copula"}


def test_stage_noise_spends_exactly_epsilon_and_splits_by_share(tmp_path: Path) -> None:
    run = run_settings(tmp_path, epsilon=1.0)
    sigma = run.release_noise_multiplier()
    stages = release_stage_noise(run)
    # σ_s = σ/√ρ_s with ρ = (0.1, 0.3, 0.6); 1/σ² adds up, so they spend one release's ε.
    assert stages == [pytest.approx(sigma / math.sqrt(rho)) for rho in (0.1, 0.3, 0.6)]
    assert sum(1 / s**2 for s in stages) == pytest.approx(1 / sigma**2)
    assert run.mechanisms() == [(s, 1.0, 1) for s in stages]
    assert epsilon_of(run.mechanisms(), delta=run.delta) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ConfigError, match="not a release family"):
        release_stage_noise(RunSettings())


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        ({"noise-placement": "distributed"}, "--secure-aggregation"),
        (
            {"noise-placement": "distributed", "secure-aggregation": True, "min-sites": 1},
            "raise --min-sites",
        ),
        ({"numeric-encoder": "dp-quantile"}, "--numeric-encoder minmax"),
    ],
)
def test_release_runs_refuse_what_their_stages_cannot_honour(
    tmp_path: Path, extra: dict[str, Any], flag: str
) -> None:
    with pytest.raises(ConfigError, match=flag):
        run_settings(tmp_path, **extra)
    # Secure aggregation, with local or distributed noise, is taken.
    run = run_settings(tmp_path, **{"secure-aggregation": True, "min-sites": 3})
    assert run.secure_aggregation and run.noise_placement == "local"
    dist = {"secure-aggregation": True, "min-sites": 3, "noise-placement": "distributed"}
    assert run_settings(tmp_path, **dist).noise_placement == "distributed"


def test_request_round_trips_and_refuses_a_nonpositive_noise(cohort: Schema) -> None:
    req = ReleaseRequest(1, 4.5, 4.69, 668, 2, cohort.fingerprint(), MARGINAL)
    assert ReleaseRequest.from_config(req.to_config()) == req
    with pytest.raises(ConfigError, match="noise-multiplier"):
        ReleaseRequest.from_config({**req.to_config(), "noise-multiplier": 0.0})
    with pytest.raises(ConfigError, match="sensitivity must be positive"):
        ReleaseRequest(1, 4.5, -1.0, 668, 2, cohort.fingerprint(), MARGINAL)


# ---------------------------------------------------------------------- site
def test_site_release_is_the_announced_mechanism_charged_before_it_is_returned(
    site: SiteSettings, cohort: Schema, tmp_path: Path
) -> None:
    family = marginal(cohort)
    req = stage_request(family, run_settings(tmp_path), 1)
    stats = exact_statistics(site, req, family.state_dict())
    # Stage 1: 105 pair tables of 200 rows: every table sums to the row count.
    assert stats.shape == (req.length,) and stats.sum() == pytest.approx(105 * 200)
    result = release_statistics(site, req, stats, run="r1")
    ledger = PrivacyLedger.open(site.ledger_path, site="h1")
    assert ledger.history == [(req.noise_multiplier, 1.0, 1)]
    assert ledger.entries[0].round == 2
    assert ledger.entries[0].max_grad_norm == pytest.approx(math.sqrt(105))
    assert result.sent and result.noisy is not None
    noise = result.noisy - stats
    # std σ_s·Δ_s per coordinate, over 2,553 draws: within 10 %.
    assert np.std(noise) == pytest.approx(req.noise_multiplier * math.sqrt(105), rel=0.1)


def test_a_mismatched_announcement_or_schema_stops_before_any_charge(
    site: SiteSettings, cohort: Schema, tmp_path: Path
) -> None:
    family = marginal(cohort)
    req = stage_request(family, run_settings(tmp_path), 1)
    wrong = ReleaseRequest(
        1, req.noise_multiplier, 1.0, req.length, 1, req.schema_fingerprint, MARGINAL
    )
    with pytest.raises(SiteConfigError, match=r"sensitivity 10.24.*announced .* and 1"):
        exact_statistics(site, wrong, family.state_dict())
    foreign = ReleaseRequest(1, 5.0, req.sensitivity, req.length, 1, "0" * 64, MARGINAL)
    with pytest.raises(SiteConfigError, match="install the consortium's current schema"):
        exact_statistics(site, foreign, family.state_dict())
    assert not site.ledger_path.exists()


def test_exhausted_budget_declines_and_charges_nothing(
    site: SiteSettings, cohort: Schema, tmp_path: Path
) -> None:
    family = marginal(cohort)
    req = stage_request(family, run_settings(tmp_path, epsilon=5.0), 0)  # over the site's ε = 1
    result = release_statistics(site, req, np.zeros(req.length), run="r1")
    assert not result.sent and result.noisy is None and "declines" in result.reason
    assert PrivacyLedger.open(site.ledger_path, site="h1").history == []


@pytest.mark.usefixtures("_task_identity")
def test_the_clientapp_answers_with_the_agreed_fields_or_declines(
    site: SiteSettings, cohort: Schema, tmp_path: Path
) -> None:
    family = marginal(cohort)
    req = stage_request(family, run_settings(tmp_path), 0)
    node_config = {
        "data-path": str(site.data_path),
        "schema-path": str(site.schema_path),
        "state-dir": str(site.state_dir),
        "site-name": site.site_name,
        "budget-epsilon": 1.0,
        "device": "cpu",
    }
    ctx = Context(run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config={})

    def ask(content: RecordDict) -> RecordDict:
        msg = Message(
            content=content, dst_node_id=3, message_type=f"train.{keys.RELEASE_STATISTICS}"
        )
        return handle_release(msg, ctx, lambda exc: type(exc).__name__).content

    config = ConfigRecord(req.to_config())  # type: ignore[arg-type]
    no_model = ask(RecordDict({keys.RELEASE_CONFIG: config}))
    assert dict(no_model[keys.SITE_INFO])[keys.STATUS] == keys.STATUS_DECLINED
    assert dict(no_model[keys.SITE_INFO])[keys.REASON] == "SiteConfigError"
    assert keys.RELEASE_ARRAYS not in no_model and not site.ledger_path.exists()
    ok = ask(
        RecordDict(
            {keys.RELEASE_CONFIG: config, keys.GLOBAL_ARRAYS: ArrayRecord(family.state_dict())}
        )
    )
    assert set(ok.keys()) == set(keys.RELEASE_REPLY_FIELDS)
    values = ok[keys.RELEASE_ARRAYS][keys.RELEASE_VALUES].numpy()  # type: ignore[index]
    assert values.shape == (req.length,)
    assert dict(ok[keys.PRIVACY_METRICS])[keys.MAX_GRAD_NORM] == pytest.approx(req.sensitivity)


# ---------------------------------------------------------------------- server resume
class _NoGrid:
    """A grid that must not be asked: resuming refits from the saved sums."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the sites were asked again ({name})")


def test_a_restart_refits_from_the_saved_sums_without_asking_the_sites(
    tmp_path: Path, cohort: Schema
) -> None:
    run = run_settings(tmp_path)
    rows = [marginal(cohort).encode(generate_cohort(300, seed=s)) for s in (1, 2)]
    expected, stages = marginal(cohort), []
    for stage, sigma in enumerate(release_stage_noise(run)):
        total = local_total(expected, rows, stage=stage, noise_multiplier=sigma, seed=0)
        std = sigma * expected.release_sensitivity(stage) * math.sqrt(2)
        expected.fit_release(total, stage=stage, noise_std=std)
        stages.append({"stage": stage, "total": total.tolist(), "noise_std_of_sum": std})
    sites = {"h1": {"epsilon": 0.99}}
    doc = {"identity": {"run": 1}, "stages": stages, "sites": sites}
    (tmp_path / RELEASE_FILE).write_text(json.dumps(doc))
    # Execute
    family, seen = marginal(cohort), {}  # type: ignore[var-annotated]
    fit_release_stages(_NoGrid(), run, family, seen, {"run": 1})  # type: ignore[arg-type]
    # Assert: the same model as fitted from those sums, and the sites' saved accounting.
    for key, value in expected.state_dict().items():
        assert family.state_dict()[key].equal(value), key
    assert seen == sites
    with pytest.raises(CheckpointError, match="different settings"):
        fit_release_stages(_NoGrid(), run, marginal(cohort), {}, {"run": 2})  # type: ignore[arg-type]
    (tmp_path / RELEASE_FILE).write_text(json.dumps({**doc, "stages": [{"stage": 0}]}))
    with pytest.raises(CheckpointError, match="damaged"):
        fit_release_stages(_NoGrid(), run, marginal(cohort), {}, {"run": 1})  # type: ignore[arg-type]


def test_privacy_report_describes_the_stages_not_dp_sgd(tmp_path: Path) -> None:
    from server.report import build_report
    from server.report_md import render_markdown
    from server.report_release import add_release_stages

    run = run_settings(tmp_path)
    stage = {"stage": 0, "length": 2553, "budget_share": 0.3, "noise_multiplier": 7.4171}
    stages = {
        "release_noise_multiplier": run.release_noise_multiplier(),
        "stages": [{**stage, "l2_sensitivity": math.sqrt(105), "sites_sent": ["h1", "h2"]}],
        "saved_sums": RELEASE_FILE,
    }
    report = build_report(run, {}, 0, "dp-marginal", 4.06, [])
    add_release_stages(report, run, stages)
    text = render_markdown(report)
    assert "fitted from 1 noisy release stage(s)" in text
    assert "stage 0: 2553 statistics, 30% of the budget, σ_s = 7.4171" in text
    assert "clip norm" not in text and "DP-SGD steps per round" not in text
    assert list(report["sent_by_each_site"]) == list(keys.RELEASE_REPLY_FIELDS)
    assert not any("individual update" in g for g in report["not_protected"])
    assert "rounds" in report["run"]["settings_not_used"]
