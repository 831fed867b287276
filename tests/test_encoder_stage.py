"""The DP encoder stage at a site and at the coordinator, and the encoder inside saved models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from client.encoder import (
    raw_histograms,
    release_histograms,
    reply_content,
)
from client.errors import SiteConfigError
from client.ledger import PrivacyLedger
from client.oneshot import ReleaseResult
from client.settings import SiteSettings
from server.encoder import ENCODER_FILE, _reuse
from server.errors import CheckpointError
from server.report import build_report
from shared import keys
from shared.accounting import epsilon_of
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.dp_quantile import HistogramRequest, cdf_from_counts
from shared.errors import ConfigError, ModelError
from shared.manifest import MANIFEST, WEIGHTS, load_model, save_model, save_state
from shared.models import build_generator
from shared.models.base import ENCODER_KEY, GeneratorFamily
from shared.tables import validate_frame

N_NUMERIC = 7  # numeric columns of the built-in cohort


@pytest.fixture
def site(tmp_path: Path) -> SiteSettings:
    schema = cohort_schema()
    schema.save(tmp_path / "schema.json")
    generate_cohort(400, seed=3).to_csv(tmp_path / "site.csv", index=False)
    return SiteSettings(
        site_name="h1",
        data_path=tmp_path / "site.csv",
        schema_path=tmp_path / "schema.json",
        state_dir=tmp_path / "state",
        budget_epsilon=1.0,
    )


def request(sigma_h: float = 5.0) -> HistogramRequest:
    return HistogramRequest(
        noise_multiplier=sigma_h, bins=16, schema_fingerprint=cohort_schema().fingerprint()
    )


def test_release_is_charged_as_one_gaussian_step_before_it_is_returned(site: SiteSettings) -> None:
    # Prepare
    req = request()
    counts = raw_histograms(site, req)
    # Execute
    result = release_histograms(site, req, counts, run="r1")
    # Assert: the ledger holds (σ_h, q = 1, 1 step) with the sensitivity √d as the bound.
    ledger = PrivacyLedger.open(site.ledger_path, site="h1")
    assert ledger.history == [(5.0, 1.0, 1)]
    assert ledger.entries[0].max_grad_norm == pytest.approx(math.sqrt(N_NUMERIC))
    assert ledger.entries[0].round == 0
    expected = epsilon_of([(5.0, 1.0, 1)], delta=site.budget_delta)
    assert result.sent and result.epsilon == pytest.approx(expected)
    assert counts.shape == (N_NUMERIC, 16) and counts.sum() > 0
    assert result.noisy is not None and result.noisy.shape == counts.shape
    # Noise of std σ_h√d ≈ 13 per bin: a bin lands within 1e-5·count of it with p < 1e-4.
    assert np.isclose(result.noisy, counts).sum() <= 2


def test_exhausted_budget_refuses_and_charges_nothing(site: SiteSettings) -> None:
    # σ_h = 0.5 costs far more than the site's ε = 1.
    req = request(sigma_h=0.5)
    result = release_histograms(site, req, raw_histograms(site, req), run="r1")
    assert not result.sent and result.noisy is None
    assert "declines" in result.reason and "Nothing was trained or sent" in result.reason
    assert PrivacyLedger.open(site.ledger_path, site="h1").history == []
    content = reply_content(site, req, result)
    assert keys.HISTOGRAM_ARRAYS not in content
    assert dict(content[keys.SITE_INFO])[keys.STATUS] == keys.STATUS_DECLINED


def test_schema_mismatch_stops_before_any_charge(site: SiteSettings) -> None:
    req = HistogramRequest(noise_multiplier=5.0, bins=16, schema_fingerprint="0" * 64)
    with pytest.raises(SiteConfigError, match="install the consortium's current schema"):
        raw_histograms(site, req)
    assert not site.ledger_path.exists()


def test_reply_holds_only_the_agreed_fields(site: SiteSettings) -> None:
    req = request()
    counts = raw_histograms(site, req)
    result = release_histograms(site, req, counts, run="r1")
    content = reply_content(site, req, result)
    assert set(content.keys()) == set(keys.ENCODER_REPLY_FIELDS)
    metrics = dict(content[keys.PRIVACY_METRICS])
    assert set(metrics) == set(keys.ENCODER_REPLY_FIELDS[keys.PRIVACY_METRICS])
    assert metrics[keys.NOISE_MULTIPLIER] == 5.0 and metrics[keys.SAMPLE_RATE] == 1.0
    sent = content[keys.HISTOGRAM_ARRAYS][keys.HISTOGRAM_COUNTS].numpy()  # type: ignore[index]
    np.testing.assert_array_equal(sent, result.noisy)


def test_sent_histograms_differ_from_raw_by_noise_of_the_stated_scale(
    site: SiteSettings,
) -> None:
    # Many releases from fresh ledgers (simulation seeds differ): the sent counts
    # minus the raw counts have mean 0 and std σ_h · √d.
    req = request(sigma_h=4.0)
    counts = raw_histograms(site, req)
    noise = []
    for i in range(60):
        s = SiteSettings(
            site_name="h1",
            data_path=site.data_path,
            schema_path=site.schema_path,
            state_dir=site.state_dir.parent / f"state-{i}",
            budget_epsilon=10.0,
            simulation_seed=i,
        )
        res = release_histograms(s, req, counts, run="r")
        assert res.noisy is not None
        noise.append(res.noisy - counts)
    stacked = np.stack(noise)
    assert stacked.std() == pytest.approx(4.0 * math.sqrt(N_NUMERIC), rel=0.05)
    assert abs(stacked.mean()) < 0.3


def dp_family(bins: int = 16) -> tuple[GeneratorFamily, np.ndarray]:
    schema = cohort_schema()
    torch.manual_seed(0)
    family = build_generator(
        schema, ModelSettings(numeric_encoder="dp-quantile", encoder_bins=bins)
    )
    rng = np.random.default_rng(0)
    cdfs = np.stack(
        [cdf_from_counts(rng.poisson(30, bins).astype(float)) for _ in range(N_NUMERIC)]
    )
    family.set_numeric_encoder(cdfs)
    return family, cdfs


def test_encoder_round_trips_with_the_model_and_sampling_respects_the_schema(
    tmp_path: Path,
) -> None:
    family, cdfs = dp_family()
    save_model(tmp_path / "model", family)
    loaded, _ = load_model(tmp_path / "model")
    np.testing.assert_allclose(loaded.state_dict()[ENCODER_KEY].double().numpy(), cdfs, atol=1e-7)
    frame = generate_cohort(200, seed=1)
    frame = validate_frame(frame.astype(object).where(frame.notna(), None), cohort_schema())
    np.testing.assert_array_equal(loaded.encode(frame), family.encode(frame))
    synth = loaded.sample(300, seed=2)
    validate_frame(synth.astype(object).where(synth.notna(), None), cohort_schema())
    # A min-max model has no encoder in its weights (its files are unchanged).
    assert ENCODER_KEY not in build_generator(cohort_schema(), ModelSettings()).state_dict()


def _rewrite_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["weights"]["sha256"] = save_state(folder / WEIGHTS, state)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_missing_encoder_in_saved_weights_fails_clearly(tmp_path: Path) -> None:
    family, _ = dp_family()
    save_model(tmp_path / "model", family)
    state = family.state_dict()
    del state[ENCODER_KEY]
    _rewrite_weights(tmp_path / "model", state)
    with pytest.raises(ModelError, match=r"hold no numeric encoder.*Restore"):
        load_model(tmp_path / "model")


def test_corrupt_encoder_in_a_checkpoint_fails_clearly(tmp_path: Path) -> None:
    # What the coordinator does on resume: load the checkpoint's state into the model.
    family, _ = dp_family()
    state = family.state_dict()
    state[ENCODER_KEY][2, 5] = 2.0  # a CDF above 1, then falling: not a CDF
    fresh = build_generator(
        cohort_schema(), ModelSettings(numeric_encoder="dp-quantile", encoder_bins=16)
    )
    with pytest.raises(ModelError, match="column 'sbp' is not a strictly increasing CDF"):
        fresh.load_state_dict(state)


def test_saved_encoder_stage_is_reused_or_refused_clearly(tmp_path: Path) -> None:
    _, cdfs = dp_family()
    identity = {"run": 1}
    doc = {"identity": identity, "info": {"bins": 16}, "cdfs": cdfs.tolist(), "sites": {"h1": {}}}
    path = tmp_path / ENCODER_FILE
    path.write_text(json.dumps(doc))
    fresh = build_generator(
        cohort_schema(), ModelSettings(numeric_encoder="dp-quantile", encoder_bins=16)
    )
    sites: dict[str, dict[str, object]] = {}
    assert _reuse(path, fresh, sites, identity) == {"bins": 16}
    assert set(sites) == {"h1"}
    with pytest.raises(CheckpointError, match="different settings"):
        _reuse(path, fresh, {}, {"run": 2})
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"damaged.*charges them again"):
        _reuse(path, fresh, {}, identity)


def test_a_declined_result_sends_no_histogram() -> None:
    content = reply_content(None, None, ReleaseResult(False, "bad table", 0.0, 0))
    assert keys.HISTOGRAM_ARRAYS not in content


def test_a_family_made_of_sub_families_refuses_the_dp_encoder() -> None:
    settings = ModelSettings(generator="staged", numeric_encoder="dp-quantile")
    with pytest.raises(ConfigError, match="use numeric-encoder 'minmax'"):
        build_generator(cohort_schema(), settings)


def test_privacy_report_states_what_the_encoder_stage_sent() -> None:
    base = {"schema-path": "s.json", "out-dir": "o", "epsilon": 1.0, "rounds": 1, "local-steps": 10}
    plain = build_report(RunSettings.from_run_config(base), {}, 1, "dp-vae", 1.0, [])
    assert plain["numeric_encoder"]["kind"] == "minmax"
    settings = RunSettings.from_run_config({**base, "numeric-encoder": "dp-quantile"})
    facts = build_report(settings, {}, 1, "dp-vae", 1.0, [])["numeric_encoder"]
    assert facts["kind"] == "dp-quantile" and facts["budget_fraction"] == 0.1
    assert facts["histogram_noise_multiplier"] == settings.encoder_noise_multiplier()
    assert keys.HISTOGRAM_ARRAYS in facts["sent_by_each_site_before_round_1"]
    assert "secure aggregation is off" in facts["server_sees"]
    secure = RunSettings.from_run_config(
        {**base, "numeric-encoder": "dp-quantile", "secure-aggregation": True, "min-sites": 2}
    )
    facts = build_report(secure, {}, 1, "dp-vae", 1.0, [])["numeric_encoder"]
    assert keys.MASKED_UPDATE in facts["sent_by_each_site_before_round_1"]
    assert facts["server_sees"].startswith("only the sum")
