"""The staged generator's DP effect calibration: maths, site release, server fit, budget split."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from client.effect import exact_sums, handle_effect, release_sums, reply_content
from client.errors import SiteConfigError
from client.ledger import PrivacyLedger
from client.oneshot import ReleaseResult
from client.settings import SiteSettings
from server.effect import EFFECT_FILE, _reuse, apply_effect
from server.errors import CheckpointError
from server.report import build_report, render_markdown
from shared import keys
from shared.accounting import calibrate_noise, epsilon_of
from shared.config import ModelSettings, RunSettings
from shared.effect import (
    MIN_SHARE,
    PROPENSITY_FLOOR,
    SCORE_CLIP,
    SHARE_WEIGHT,
    EffectRequest,
    add_effect_noise,
    effect_from_sums,
    effect_sensitivity,
)
from shared.errors import ConfigError
from shared.models import build_generator
from shared.models.staged import StagedGenerator
from shared.models.staged_effect import (
    _drawn_covariates,
    calibrate_effect,
    calibrate_treatment,
    check_calibratable,
    effect_sums,
    model_effects,
    model_shares,
)
from shared.schema import Schema
from tests.test_staged import TINY_SCHEMA, _tiny

STAGED = ModelSettings(generator="staged", hidden=16, latent=4)
HALF_RANGE = 30.0  # y in [-20, 40]: one encoded unit is 30 of y's units


def tiny_family(mu0: float = 0.1, mu1: float = 0.3, logit1: float = 0.0) -> StagedGenerator:
    """A staged generator whose outcome means and propensity do not depend on x."""
    torch.manual_seed(0)
    family = build_generator(TINY_SCHEMA, STAGED)
    assert isinstance(family, StagedGenerator)
    module = family.module
    with torch.no_grad():
        for head in (module.propensity, module.outcome):
            for p in head.parameters():
                p.zero_()
        module.outcome.linear[0].bias[0] = mu0
        module.outcome.linear[0].bias[1] = -3.0  # std 0.05: draws stay clear of the clamp
        module.outcome.linear[1].bias[0] = mu1 - mu0
        module.propensity.linear[0].bias[1] = logit1
    return family


def encoded_rows(family: StagedGenerator, n: int, seed: int) -> np.ndarray:
    return np.asarray(family.transformer.encode(_tiny(n, seed)), np.float32)


def outcome_and_treated(family: StagedGenerator, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoded y and the treated flag of each row."""
    y = rows[:, family.module.positions("outcome").tolist()[0]].astype(np.float64)
    return y, rows[:, family.module.positions("treatment").tolist()[1]] > 0.5


# ---------------------------------------------------------------------- maths
def test_sensitivity_is_the_norm_of_the_largest_row_vector() -> None:
    assert effect_sensitivity(2) == pytest.approx(math.sqrt(SCORE_CLIP**2 + SHARE_WEIGHT**2 + 1))
    assert effect_sensitivity(4) == pytest.approx(math.sqrt(3 * SCORE_CLIP**2 + 0.16 + 1))
    with pytest.raises(ConfigError, match="at least 2 treatment arms"):
        effect_sensitivity(1)


def test_scores_match_the_aipw_formula_for_known_nuisances() -> None:
    # μ̂_0 = 0.1, μ̂_1 = 0.3 and ê_1 = 0.5 everywhere (weights zeroed, biases set).
    family = tiny_family()
    rows = encoded_rows(family, 200, seed=1)
    y, treated = outcome_and_treated(family, rows)
    phi = np.where(treated, 0.2 + (y - 0.3) / 0.5, 0.2 - (y - 0.1) / 0.5)
    expected = np.clip(phi, -SCORE_CLIP, SCORE_CLIP).sum()
    # Execute
    sums = effect_sums(family, rows)
    # Assert: (Σ φ, w·n_treated, n)
    assert sums.shape == (3,) and sums[2] == 200.0
    assert sums[0] == pytest.approx(expected, rel=1e-5)
    assert sums[1] == pytest.approx(SHARE_WEIGHT * treated.sum())


def test_the_propensity_floor_bounds_the_weights() -> None:
    # ê_1 = sigmoid(-10) is far below the floor: every treated residual is divided by the floor.
    family = tiny_family(logit1=-10.0)
    rows = encoded_rows(family, 100, seed=2)
    y, treated = outcome_and_treated(family, rows)
    e0 = 1.0 / (1.0 + math.exp(-10.0))
    phi = np.where(treated, 0.2 + (y - 0.3) / PROPENSITY_FLOOR, 0.2 - (y - 0.1) / e0)
    sums = effect_sums(family, rows)
    assert sums[0] == pytest.approx(np.clip(phi, -SCORE_CLIP, SCORE_CLIP).sum(), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), mu1=st.floats(-1.0, 1.0), logit=st.floats(-8.0, 8.0))
def test_one_row_moves_the_released_vector_by_at_most_the_sensitivity(
    seed: int, mu1: float, logit: float
) -> None:
    family = tiny_family(mu1=mu1, logit1=logit)
    row = encoded_rows(family, 1, seed)
    assert float(np.linalg.norm(effect_sums(family, row))) <= effect_sensitivity(2) + 1e-9


def test_noise_has_the_stated_scale_and_the_estimate_divides_by_the_count() -> None:
    rng = np.random.default_rng(0)
    draws = np.stack(
        [add_effect_noise(np.zeros(3), noise_multiplier=3.0, arms=2, rng=rng) for _ in range(4000)]
    )
    assert draws.std(axis=0) == pytest.approx([3.0 * effect_sensitivity(2)] * 3, rel=0.05)
    # Three arms: (Σ φ_1, Σ φ_2, w·n_1, w·n_2, n).
    three = effect_from_sums(np.array([-12.0, 4.0, 0.4 * 100, 0.4 * 60, 400.0]), 3)
    np.testing.assert_allclose(three.psi, [-0.03, 0.01])
    assert three.shares is not None
    np.testing.assert_allclose(three.shares, [0.6, 0.25, 0.15])
    # A noisy count near 0 cannot blow the estimate up, and shares stay in (0, 1).
    tiny = effect_from_sums(np.array([0.5, -3.0, -3.0]), 2)
    np.testing.assert_allclose(tiny.psi, [0.5])
    assert tiny.shares is not None and tiny.shares.min() >= MIN_SHARE / (1 + MIN_SHARE)
    assert tiny.shares.sum() == pytest.approx(1.0)
    # A vector saved before the arm counts were released: ψ only.
    legacy = effect_from_sums(np.array([-12.0, 400.0]), 2)
    np.testing.assert_allclose(legacy.psi, [-0.03])
    assert legacy.shares is None
    with pytest.raises(ConfigError, match="has 3 numbers"):
        effect_from_sums(np.zeros(4), 2)
    with pytest.raises(ConfigError, match="must be positive"):
        add_effect_noise(np.zeros(2), noise_multiplier=0.0, arms=2, rng=rng)


def test_calibration_moves_the_generators_effect_onto_the_estimate() -> None:
    family = tiny_family()
    before = model_effects(family, rows=5000, seed=0)
    # Execute
    facts = calibrate_effect(family, np.array([-0.15]), seed=0)
    # Assert: the offsets moved, the surface did not, and sampling reflects the new effect.
    assert before[0] == pytest.approx(0.2, abs=1e-6)
    assert facts["after"][0] == pytest.approx(-0.15, abs=1e-4)
    assert family.module.outcome.linear[0].bias[0].item() == pytest.approx(0.1)
    synthetic = family.sample(20_000, seed=1)
    means = synthetic.groupby("t")["y"].mean()
    assert means["yes"] - means["no"] == pytest.approx(-0.15 * HALF_RANGE, abs=0.5)


def test_treatment_calibration_moves_the_generators_shares_onto_the_released_ones() -> None:
    family = tiny_family(logit1=-2.0)  # ê_1 = sigmoid(-2) = 0.12 everywhere
    cov = _drawn_covariates(family, rows=5000, seed=0)
    assert model_shares(family, cov)[1] == pytest.approx(0.1192, abs=1e-3)
    # Execute
    facts = calibrate_treatment(family, np.array([0.7, 0.3]), seed=0)
    # Assert: the propensity moved, the outcome did not, and sampling reflects the new share.
    assert facts["after"] == [pytest.approx(0.7, abs=1e-4), pytest.approx(0.3, abs=1e-4)]
    assert model_effects(family, rows=5000, seed=0)[0] == pytest.approx(0.2, abs=1e-6)
    synthetic = family.sample(20_000, seed=1)
    assert (synthetic["t"] == "yes").mean() == pytest.approx(0.3, abs=0.015)
    with pytest.raises(ConfigError, match="do not fit 2 arms"):
        calibrate_treatment(family, np.array([1.0, 0.0]), seed=0)


def test_a_categorical_outcome_cannot_be_calibrated() -> None:
    doc = TINY_SCHEMA.to_dict()
    doc["roles"] = {"treatment": "t", "outcome": "g"}
    family = build_generator(Schema.from_dict(doc), STAGED)
    with pytest.raises(ConfigError, match=r"numeric outcome.*--effect-budget-fraction 0"):
        check_calibratable(family)


def test_request_round_trips_through_the_flower_config() -> None:
    req = EffectRequest(2.5, 2, 11, "f" * 64, STAGED, "rdp")
    assert EffectRequest.from_config(req.to_config()) == req
    with pytest.raises(ConfigError, match="ledger-round"):
        EffectRequest.from_config({**req.to_config(), "ledger-round": 0})


# ---------------------------------------------------------------------- budget split
@pytest.mark.parametrize("encoder", ["minmax", "dp-quantile"])
def test_the_run_spends_exactly_its_epsilon_over_all_mechanisms(encoder: str) -> None:
    run = RunSettings(
        rounds=3, local_steps=20, model=ModelSettings(generator="staged", numeric_encoder=encoder)
    )
    spent = epsilon_of(run.mechanisms(), delta=run.delta)
    assert run.calibrates_effect
    assert 0.99 * run.epsilon <= spent <= run.epsilon
    # DP-SGD alone gets (1 - f) of ε (less the encoder's share when there is one).
    share = 1 - run.effect_budget_fraction - (0.1 if encoder == "dp-quantile" else 0.0)
    assert run.noise_multiplier() == pytest.approx(
        calibrate_noise(
            target_epsilon=run.epsilon * share,
            delta=run.delta,
            sample_rate=run.sample_rate,
            steps=run.planned_steps,
        )
    )


def test_a_zero_fraction_or_another_family_turns_the_stage_off() -> None:
    off = RunSettings(effect_budget_fraction=0.0, model=ModelSettings(generator="staged"))
    vae = RunSettings(model=ModelSettings(generator="dp-vae"))
    assert not off.calibrates_effect and not vae.calibrates_effect
    assert off.noise_multiplier() == vae.noise_multiplier()
    assert len(off.mechanisms()) == 1
    with pytest.raises(ConfigError, match="no effect calibration"):
        vae.effect_noise_multiplier()


def test_fraction_is_validated_and_distributed_noise_refuses_it() -> None:
    base = {"schema-path": "s.json", "out-dir": "/tmp/o", "generator": "staged"}
    with pytest.raises(ConfigError, match="effect-budget-fraction"):
        RunSettings.from_run_config({**base, "effect-budget-fraction": 0.6})
    distributed = RunSettings(
        noise_placement="distributed",
        secure_aggregation=True,
        announced_rows=1000,
        min_sites=3,
        model=ModelSettings(generator="staged"),
    )
    with pytest.raises(ConfigError, match="--effect-budget-fraction 0"):
        distributed.distributed_plan()


# ---------------------------------------------------------------------- site
@pytest.fixture
def site(tmp_path: Path) -> SiteSettings:
    TINY_SCHEMA.save(tmp_path / "schema.json")
    _tiny(300, seed=5).to_csv(tmp_path / "site.csv", index=False)
    return SiteSettings(
        site_name="h1",
        data_path=tmp_path / "site.csv",
        schema_path=tmp_path / "schema.json",
        state_dir=tmp_path / "state",
        budget_epsilon=1.0,
    )


def effect_request(sigma_e: float = 5.0, fingerprint: str = "") -> EffectRequest:
    return EffectRequest(sigma_e, 2, 11, fingerprint or TINY_SCHEMA.fingerprint(), STAGED)


def test_site_release_is_charged_as_one_gaussian_step_before_it_is_returned(
    site: SiteSettings,
) -> None:
    family = tiny_family()
    req = effect_request()
    sums = exact_sums(site, req, family.state_dict())
    # Execute
    result = release_sums(site, req, sums, run="r1")
    # Assert: (σ_e, q = 1, 1 step) under round rounds + 1, with Δ as the bound.
    ledger = PrivacyLedger.open(site.ledger_path, site="h1")
    assert ledger.history == [(5.0, 1.0, 1)]
    assert ledger.entries[0].round == 11
    assert ledger.entries[0].max_grad_norm == pytest.approx(effect_sensitivity(2))
    assert result.sent and result.epsilon == pytest.approx(
        epsilon_of([(5.0, 1.0, 1)], delta=site.budget_delta)
    )
    assert sums[2] == 300.0 and result.noisy is not None and result.noisy.shape == (3,)
    assert not np.isclose(result.noisy, sums).any()
    content = reply_content(site, req, result)
    assert set(content.keys()) == set(keys.EFFECT_REPLY_FIELDS)
    sent = content[keys.EFFECT_ARRAYS][keys.EFFECT_SUMS].numpy()  # type: ignore[index]
    np.testing.assert_array_equal(sent, result.noisy)


def test_exhausted_budget_refuses_and_charges_nothing(site: SiteSettings) -> None:
    req = effect_request(sigma_e=0.3)  # far more than the site's ε = 1
    result = release_sums(site, req, np.array([1.0, 40.0, 300.0]), run="r1")
    assert not result.sent and result.noisy is None
    assert "declines" in result.reason and "Nothing was trained or sent" in result.reason
    assert PrivacyLedger.open(site.ledger_path, site="h1").history == []
    content = reply_content(site, req, result)
    assert keys.EFFECT_ARRAYS not in content
    assert dict(content[keys.SITE_INFO])[keys.STATUS] == keys.STATUS_DECLINED


def test_schema_mismatch_stops_before_any_charge(site: SiteSettings) -> None:
    req = effect_request(fingerprint="0" * 64)
    with pytest.raises(SiteConfigError, match="install the consortium's current schema"):
        exact_sums(site, req, tiny_family().state_dict())
    assert not site.ledger_path.exists()
    assert keys.EFFECT_ARRAYS not in reply_content(None, None, ReleaseResult(False, "x", 0, 0))


# ---------------------------------------------------------------------- server
def test_server_fit_reports_the_estimate_in_column_units() -> None:
    family = tiny_family()
    run = RunSettings(rounds=2, local_steps=10, model=STAGED)
    total = np.array([30.0, SHARE_WEIGHT * 150.0, 600.0])
    facts = apply_effect(family, total, run, ["h1", "h2"])
    assert facts["estimate"] == [pytest.approx(0.05 * HALF_RANGE)]
    assert facts["treatment_shares"] == [pytest.approx(0.75), pytest.approx(0.25)]
    assert facts["generator_shares_before"][1] == pytest.approx(0.5, abs=1e-6)
    assert facts["generator_shares_after"][1] == pytest.approx(0.25, abs=1e-4)
    assert facts["generator_effect_before"] == [pytest.approx(0.2 * HALF_RANGE)]
    assert facts["generator_effect_after"] == [pytest.approx(0.05 * HALF_RANGE, abs=1e-2)]
    assert facts["noise_multiplier"] == run.effect_noise_multiplier()


def test_saved_estimate_is_reused_or_refused_clearly(tmp_path: Path) -> None:
    run = RunSettings(rounds=2, local_steps=10, out_dir=str(tmp_path), model=STAGED)
    identity = {"run": 1}
    path = tmp_path / EFFECT_FILE
    doc = {"identity": identity, "info": {"sites_sent": ["h1"]}, "total": [30.0, 600.0]}
    path.write_text(json.dumps({**doc, "sites": {"h1": {"epsilon": 1.0}}}))
    sites: dict[str, dict[str, float]] = {}
    facts = _reuse(path, tiny_family(), run, sites, identity)  # type: ignore[arg-type]
    assert facts["estimate"] == [pytest.approx(1.5)] and sites == {"h1": {"epsilon": 1.0}}
    with pytest.raises(CheckpointError, match="different settings"):
        _reuse(path, tiny_family(), run, {}, {"run": 2})
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"damaged.*charges them again"):
        _reuse(path, tiny_family(), run, {}, identity)


# ---------------------------------------------------------------------- ClientApp handler
def effect_message(family: StagedGenerator, req: EffectRequest) -> Message:
    content = RecordDict(
        {
            keys.GLOBAL_ARRAYS: ArrayRecord(family.state_dict()),
            keys.EFFECT_CONFIG: ConfigRecord(req.to_config()),
        }
    )
    return Message(content=content, dst_node_id=3, message_type=f"train.{keys.EFFECT_CALIBRATION}")


def handler_reply(site: SiteSettings, msg: Message) -> RecordDict:
    node_config = {
        "data-path": str(site.data_path),
        "schema-path": str(site.schema_path),
        "state-dir": str(site.state_dir),
        "site-name": site.site_name,
        "budget-epsilon": 1.0,
        "device": "cpu",
    }
    ctx = Context(run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config={})
    return handle_effect(msg, ctx, lambda exc: type(exc).__name__).content


@pytest.mark.usefixtures("_task_identity")
def test_the_clientapp_answers_with_noisy_sums_or_declines_without_charge(
    site: SiteSettings,
) -> None:
    msg = effect_message(tiny_family(), effect_request())
    # A table with a value out of the schema's bounds: declined, nothing charged or sent.
    good = site.data_path.read_text()
    site.data_path.write_text(good.replace("\n", "\n99,a,no,0\n", 1))
    bad = handler_reply(site, msg)
    assert dict(bad[keys.SITE_INFO])[keys.STATUS] == keys.STATUS_DECLINED
    assert dict(bad[keys.SITE_INFO])[keys.REASON] == "DataValidationError"
    assert keys.EFFECT_ARRAYS not in bad and not site.ledger_path.exists()
    # The valid table: one release, recorded, with the agreed fields only.
    site.data_path.write_text(good)
    ok = handler_reply(site, msg)
    assert set(ok.keys()) == set(keys.EFFECT_REPLY_FIELDS)
    assert dict(ok[keys.PRIVACY_METRICS])[keys.STEPS] == 1
    assert PrivacyLedger.open(site.ledger_path, site="h1").history == [(5.0, 1.0, 1)]


def test_privacy_report_states_what_the_effect_stage_sent(tmp_path: Path) -> None:
    base = {"schema-path": "s.json", "out-dir": str(tmp_path), "rounds": 1, "local-steps": 10}
    plain = build_report(RunSettings.from_run_config(base), {}, 1, "dp-vae", 1.0, [])
    assert plain["effect_calibration"] == {"enabled": False}
    assert "Effect calibration" not in render_markdown(plain)
    settings = RunSettings.from_run_config({**base, "generator": "staged"})
    info = {"estimate": [-37.4], "generator_effect_before": [-39.0], "units": "y"}
    (tmp_path / EFFECT_FILE).write_text(json.dumps({"info": info}))
    report = build_report(settings, {}, 1, "staged", 1.0, [])
    facts = report["effect_calibration"]
    assert facts["enabled"] and facts["budget_fraction"] == 0.2
    assert facts["noise_multiplier"] == settings.effect_noise_multiplier()
    assert facts["estimate"] == [-37.4]
    assert keys.EFFECT_ARRAYS in facts["sent_by_each_site_after_the_last_round"]
    assert "Effect calibration" in render_markdown(report) and "-37.400" in render_markdown(report)


def test_the_propensity_weight_scales_only_the_propensity_loss() -> None:
    torch.manual_seed(0)
    family = build_generator(TINY_SCHEMA, replace(STAGED, propensity_weight=1.0))
    module = family.module
    rows = torch.from_numpy(encoded_rows(tiny_family(), 64, seed=4))
    out = module(rows).detach()
    one, ten = family.criterion(), family.criterion()
    for criterion, weight in ((one, 1.0), (ten, 10.0)):
        criterion.reduction, criterion.propensity_weight = "none", weight
    logits = module.propensity(module.part(rows, "cov")).detach()
    nll = F.cross_entropy(logits, module.part(rows, "treatment").argmax(1), reduction="none")
    # Execute / Assert: the difference is 9 × the propensity head's NLL, row by row.
    assert torch.allclose(ten(out, rows) - one(out, rows), 9.0 * nll, atol=1e-4)
    assert build_generator(TINY_SCHEMA, STAGED).criterion().propensity_weight == 10.0
    with pytest.raises(ConfigError, match="propensity-weight"):
        ModelSettings.from_config({"propensity-weight": 0})
    assert ModelSettings.from_config(STAGED.to_config()) == STAGED
