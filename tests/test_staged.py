"""Unit tests for the staged, causal-aware generator (``staged``) and its heads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from client.training import train_dp, train_plain
from shared.cohort import generate_cohort
from shared.config import ModelSettings
from shared.errors import ConfigError, ModelError
from shared.manifest import MANIFEST, load_model, save_model
from shared.models import available_families, build_generator
from shared.models.heads import ConditionalHead, span_nll, zero_absent_values
from shared.models.staged import StagedGenerator, StagedModule
from shared.schema import Schema
from shared.tables import validate_frame
from shared.transforms import SpanInfo

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]
CPU = torch.device("cpu")
STAGED = ModelSettings(generator="staged", hidden=16, latent=4)

# A tiny problem with a known effect: x confounds t and y; y = 10 + 4x + 3t + N(0, 1).
TINY_EFFECT = 3.0
TINY_SCHEMA = Schema.from_dict(
    {
        "fedsynth_schema_version": 1,
        "name": "tiny-causal",
        "columns": [
            {"name": "x", "type": "continuous", "min": -4, "max": 4},
            {"name": "g", "type": "categorical", "categories": ["a", "b"]},
            {"name": "t", "type": "categorical", "categories": ["no", "yes"]},
            {"name": "y", "type": "continuous", "min": -20, "max": 40},
        ],
        "roles": {"treatment": "t", "outcome": "y"},
    }
)


def _tiny(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0, 1, n), -4, 4)
    t = rng.random(n) < 1 / (1 + np.exp(-1.5 * x))
    y = 10 + 4 * x + TINY_EFFECT * t + rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "x": x,
            "g": np.where(rng.random(n) < 0.5, "a", "b").astype(object),
            "t": np.where(t, "yes", "no").astype(object),
            "y": y,
        }
    )
    return validate_frame(frame.astype(object), TINY_SCHEMA)


@pytest.fixture
def staged(cohort: Schema) -> StagedGenerator:
    torch.manual_seed(0)
    family = build_generator(cohort, STAGED)
    assert isinstance(family, StagedGenerator)
    return family


# ---------------------------------------------------------------------- building
def test_staged_is_registered_and_holds_three_stages_and_the_target(
    staged: StagedGenerator,
) -> None:
    # Assert
    assert "staged" in available_families()
    module = staged.module
    assert isinstance(module, StagedModule) and staged.private_module() is module
    assert module.covariates is staged.cov_family.module
    assert staged.cov_family.name == "dp-vae"
    # Covariates exclude treatment, outcome and the (post-treatment) target.
    assert "statin" not in staged.cov_family.schema.names
    assert "ldl_12m" not in staged.cov_family.schema.names
    assert "mace" not in staged.cov_family.schema.names
    assert len(staged.cov_family.schema.names) == 12
    prefixes = {k.split(".")[0] for k in staged.state_dict()}
    assert prefixes == {"covariates", "propensity", "outcome", "post"}
    assert module.outcome.arms == 2  # shared surface + the statin arm's offset


def test_schema_without_treatment_and_outcome_roles_is_refused(small_schema: Schema) -> None:
    # Act / Assert
    with pytest.raises(ConfigError, match="needs a schema with 'treatment' and 'outcome' roles"):
        build_generator(small_schema, STAGED)


def test_staged_cannot_be_its_own_covariate_generator(cohort: Schema) -> None:
    settings = ModelSettings(generator="staged", covariate_generator="staged")
    with pytest.raises(ConfigError, match="covariate-generator cannot be 'staged'"):
        build_generator(cohort, settings)


@pytest.mark.parametrize("family", ["dp-marginal", "dp-copula"])
def test_a_release_family_cannot_draw_the_covariates(cohort: Schema, family: str) -> None:
    settings = ModelSettings(generator="staged", covariate_generator=family)
    with pytest.raises(ConfigError, match=f"'{family}' is fitted from noisy releases.*'dp-vae'"):
        build_generator(cohort, settings)


def test_unknown_covariate_generator_is_refused(cohort: Schema) -> None:
    settings = ModelSettings(generator="staged", covariate_generator="nope")
    with pytest.raises(ConfigError, match="unknown generator 'nope'"):
        build_generator(cohort, settings)


def test_model_settings_round_trip_the_covariate_generator() -> None:
    settings = ModelSettings(generator="staged", covariate_generator="dp-vae", effect_model="mlp")
    assert ModelSettings.from_config(settings.to_config()) == settings


def test_unknown_effect_model_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"effect-model.*one of \['linear', 'mlp'\]"):
        ModelSettings.from_config({"effect-model": "quadratic"})


@pytest.mark.parametrize(("effect_model", "offset_weights"), [("linear", 24 * 2), ("mlp", 464)])
def test_effect_model_sets_the_offset_networks(
    cohort: Schema, effect_model: str, offset_weights: int
) -> None:
    # Prepare: the cohort's 12 covariates encode to 23 slots; the outcome head
    # emits (mean, log-std), so a linear offset has (23 + 1) × 2 weights.
    settings = ModelSettings(generator="staged", effect_model=effect_model)
    # Execute
    outcome = build_generator(cohort, settings).module.outcome
    # Assert: the shared surface keeps its MLP; only the offset differs.
    offset = [p for name, p in outcome.named_parameters() if name.split(".")[1] == "1"]
    assert sum(p.numel() for p in offset) == offset_weights
    assert sum(p.numel() for p in outcome.hidden[0].parameters()) == 24 * 16


# ---------------------------------------------------------------------- DP training
def test_trains_with_opacus_ghost_clipping_and_samples_schema_valid_rows(
    staged: StagedGenerator, cohort: Schema
) -> None:
    # Prepare
    frame = validate_frame(generate_cohort(400, seed=3), cohort)
    data = torch.from_numpy(staged.encode(frame))
    before = staged.state_dict()
    # Execute
    stats = train_dp(
        staged,
        data,
        steps=5,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        learning_rate=0.01,
        device=CPU,
        seed=0,
    )
    sample = staged.sample(300, seed=1)
    # Assert: every stage moved (one DP mechanism over the joint per-row gradient).
    after = staged.state_dict()
    for stage in ("covariates", "propensity", "outcome", "post"):
        keys = [k for k in before if k.startswith(stage)]
        assert any(not torch.equal(before[k], after[k]) for k in keys), stage
    assert stats.steps == 5 and math.isfinite(stats.last_loss)
    assert not any(k.startswith("_module") for k in after)
    valid = validate_frame(sample, cohort)
    assert len(valid) == 300 and list(valid.columns) == cohort.names


def test_treatment_is_drawn_from_the_propensity_model(staged: StagedGenerator) -> None:
    # Prepare: a propensity that ignores the covariates and gives P(statin) = 0.3.
    module = staged.module
    assert isinstance(module, StagedModule)
    with torch.no_grad():
        for p in module.propensity.parameters():
            p.zero_()
        module.propensity.linear[0].bias.copy_(torch.tensor([0.0, math.log(0.3 / 0.7)]))
    # Execute
    sample = staged.sample(20_000, seed=4)
    # Assert: binomial sd at n = 20,000 is 0.0032.
    assert (sample["statin"] == "yes").mean() == pytest.approx(0.3, abs=0.015)


def test_outcome_is_drawn_from_the_arm_of_the_sampled_treatment(
    staged: StagedGenerator, cohort: Schema
) -> None:
    # Prepare: arm "no" has scaled mean -0.5, arm "yes" an offset of +1 (so +0.5).
    module = staged.module
    assert isinstance(module, StagedModule)
    with torch.no_grad():
        for p in module.outcome.parameters():
            p.zero_()
        module.outcome.linear[0].bias.copy_(torch.tensor([-0.5, -5.0]))
        module.outcome.linear[1].bias.copy_(torch.tensor([1.0, 0.0]))
    # Execute
    sample = staged.sample(2000, seed=5)
    # Assert: scaled ±0.5 on [20, 300] is 90 and 230 mg/dL.
    by_arm = sample.groupby("statin")["ldl_12m"].mean()
    assert by_arm["no"] == pytest.approx(90.0, abs=1.0)
    assert by_arm["yes"] == pytest.approx(230.0, abs=1.0)


# ---------------------------------------------------------------------- files
def test_saves_and_loads_through_the_manifest(staged: StagedGenerator, tmp_path: Path) -> None:
    # Execute
    folder = save_model(tmp_path / "model", staged)
    loaded, manifest = load_model(folder)
    # Assert
    assert manifest["generator"] == "staged"
    assert manifest["model_settings"]["covariate_generator"] == "dp-vae"
    assert (folder / MANIFEST).is_file()
    assert isinstance(loaded, StagedGenerator)
    pd.testing.assert_frame_equal(loaded.sample(200, seed=9), staged.sample(200, seed=9))


def test_a_manifest_from_before_effect_model_loads_with_mlp_offsets(
    cohort: Schema, tmp_path: Path
) -> None:
    # Prepare: an MLP-offset model whose manifest lacks the key, as older runs wrote it.
    torch.manual_seed(0)
    older = build_generator(cohort, ModelSettings(generator="staged", effect_model="mlp"))
    folder = save_model(tmp_path / "model", older)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    del manifest["model_settings"]["effect_model"]
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    # Execute
    loaded, _ = load_model(folder)
    # Assert
    assert loaded.settings.effect_model == "mlp"
    pd.testing.assert_frame_equal(loaded.sample(200, seed=9), older.sample(200, seed=9))


# ---------------------------------------------------------------------- effect recovery
def test_recovers_a_known_ate_without_dp() -> None:
    # Prepare
    torch.manual_seed(0)
    family = build_generator(TINY_SCHEMA, STAGED)
    data = torch.from_numpy(family.encode(_tiny(2000, seed=1)))
    # Execute: Adam at a fixed step size jitters around the optimum, so a short
    # second phase at a lower rate settles the arms' outcome surfaces.
    train_plain(family, data, steps=300, sample_rate=0.1, learning_rate=0.02, device=CPU, seed=0)
    train_plain(family, data, steps=200, sample_rate=0.1, learning_rate=0.002, device=CPU, seed=1)
    sample = family.sample(5000, seed=2)
    # Assert: regression adjustment on the synthetic rows (y ~ x + t) gives the effect.
    x = sample["x"].to_numpy(float)
    t = (sample["t"] == "yes").to_numpy(float)
    design = np.column_stack([np.ones_like(x), x, t])
    coef = np.linalg.lstsq(design, sample["y"].to_numpy(float), rcond=None)[0]
    assert coef[2] == pytest.approx(TINY_EFFECT, abs=0.4)  # within 13%
    assert coef[1] == pytest.approx(4.0, abs=0.3)
    assert 0.3 < t.mean() < 0.7


# ---------------------------------------------------------------------- head maths
@settings(max_examples=50, deadline=None)
@given(
    mean=st.floats(-2, 2),
    logstd=st.floats(-4, 0.9),
    target=st.floats(-1, 1),
    logits=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    label=st.integers(0, 2),
)
def test_span_nll_is_gaussian_nll_plus_cross_entropy(
    mean: float, logstd: float, target: float, logits: list[float], label: int
) -> None:
    # Prepare: one numeric span then one 3-way categorical span.
    spans = (SpanInfo("y", "numeric", 0, 1), SpanInfo("c", "categorical", 1, 3))
    params = torch.tensor([[mean, logstd, *logits]], dtype=torch.float64)
    encoded = torch.zeros(1, 4, dtype=torch.float64)
    encoded[0, 0] = target
    encoded[0, 1 + label] = 1.0
    # Execute
    got = float(span_nll(spans, params, encoded)[0])
    # Assert
    gauss = 0.5 * ((target - mean) / math.exp(logstd)) ** 2 + logstd
    ce = float(F.cross_entropy(torch.tensor([logits], dtype=torch.float64), torch.tensor([label])))
    assert got == pytest.approx(gauss + ce, rel=1e-9, abs=1e-9)


def test_missing_outcome_values_carry_no_gaussian_loss() -> None:
    # Prepare: a nullable numeric (value + [present, missing]) marked missing.
    spans = (SpanInfo("y", "numeric", 0, 1), SpanInfo("y", "missing", 1, 2))
    params = torch.tensor([[0.9, 0.0, 0.0, 0.0]])
    encoded = torch.tensor([[0.0, 0.0, 1.0]])
    # Execute / Assert: only the 2-way missing-indicator cross-entropy remains.
    assert float(span_nll(spans, params, encoded)[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_zero_absent_values_puts_drawn_rows_in_the_encoders_form() -> None:
    # Prepare: value slots 0 and 3; column "a" has [present, missing], "b" atoms
    # [value, atom 1, atom 2].
    spans = (
        SpanInfo("a", "numeric", 0, 1),
        SpanInfo("a", "missing", 1, 2),
        SpanInfo("b", "numeric", 3, 1),
        SpanInfo("b", "atoms", 4, 3),
    )
    drawn = torch.tensor(
        [
            [0.7, 1.0, 0.0, -0.4, 1.0, 0.0, 0.0],  # both present
            [0.7, 0.0, 1.0, -0.4, 0.0, 0.0, 1.0],  # a missing, b at an atom
        ]
    )
    # Execute
    out = zero_absent_values(spans, drawn)
    # Assert: only absent values are zeroed, as TableTransformer.encode writes them.
    assert out[0].tolist() == pytest.approx(drawn[0].tolist())
    assert out[1, [0, 3]].tolist() == [0.0, 0.0]
    assert out[1, [1, 2, 4, 5, 6]].tolist() == drawn[1, [1, 2, 4, 5, 6]].tolist()
    assert drawn[1, 0] == pytest.approx(0.7)  # the input is not modified


def test_heads_condition_on_covariates_in_the_encoders_form(staged: StagedGenerator) -> None:
    # Prepare: the cohort's bmi and hba1c are nullable; the encoder writes 0 in the
    # value slot of a missing value, and the heads were trained on that form.
    seen: list[torch.Tensor] = []
    staged.module.outcome.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    spans = staged.cov_family.transformer.spans
    # Execute
    staged.sample_encoded(2000, torch.Generator().manual_seed(0))
    # Assert: some rows have missing values, and each one's value slot is 0.
    cov = seen[0]
    for column in ("bmi", "hba1c"):
        value = next(s for s in spans if s.column == column and s.kind == "numeric")
        missing = next(s for s in spans if s.column == column and s.kind == "missing")
        absent = cov[:, missing.start + 1] == 1
        assert 0 < int(absent.sum()) < len(cov)
        assert torch.all(cov[absent, value.start] == 0)


def test_a_multi_arm_head_needs_the_arm() -> None:
    head = ConditionalHead(3, (SpanInfo("y", "numeric", 0, 1),), hidden=4, arms=2)
    with pytest.raises(ModelError, match="needs the one-hot arm"):
        head(torch.zeros(2, 3))
