"""Unit tests for the DP conditional GAN family (``dp-ctgan``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from client.app import handle_train
from client.training import train_dp, train_plain
from shared import keys
from shared.accounting import epsilon_of
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.errors import ConfigError
from shared.manifest import load_model, save_model
from shared.models import available_families, build_generator
from shared.models.gan import DPCTGAN, AdversarialLoop
from shared.models.gan_cond import CondSampler, public_category_frequencies
from shared.schema import Schema
from shared.tables import validate_frame
from tests.e2e import independent_epsilon

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]

CPU = torch.device("cpu")
GAN = ModelSettings(generator="dp-ctgan", hidden=16, gan_noise=8)
COHORT = cohort_schema()


def _rows(schema: Schema, n: int, seed: int = 1) -> torch.Tensor:
    raw = generate_cohort(n, seed=seed)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    return torch.from_numpy(build_generator(schema, GAN).encode(frame))


COHORT_ROWS = _rows(COHORT, 40)


@pytest.fixture
def gan(cohort: Schema) -> DPCTGAN:
    torch.manual_seed(0)
    family = build_generator(cohort, GAN)
    assert isinstance(family, DPCTGAN)
    return family


def test_is_registered_and_small(gan: DPCTGAN) -> None:
    assert "dp-ctgan" in available_families()
    width = gan.transformer.width
    cond = sum(s.width for s in gan.transformer.spans if s.kind == "categorical")
    assert gan.cond.width == cond == 17  # the cohort's 8 categorical columns
    d = gan.private_module()
    # D: (row + cond) -> hidden -> 1. Only D is private.
    assert sum(p.numel() for p in d.parameters()) == (width + cond) * 16 + 16 + 16 + 1
    assert 1_000 < sum(p.numel() for p in gan.module.parameters()) < 30_000


def test_state_dict_round_trips_through_the_manifest(gan: DPCTGAN, tmp_path: Path) -> None:
    save_model(tmp_path / "m", gan)
    loaded, manifest = load_model(tmp_path / "m")
    assert manifest["model_settings"]["gan_noise"] == 8
    for k, v in gan.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert any(k.startswith("discriminator.") for k in gan.state_dict())
    assert any(k.startswith("generator.") for k in gan.state_dict())


def test_samples_are_valid_against_the_schema(gan: DPCTGAN, cohort: Schema) -> None:
    train_dp(
        gan,
        _rows(cohort, 400),
        steps=5,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        learning_rate=0.01,
        device=CPU,
        seed=0,
    )
    table = gan.sample(500, seed=3)
    assert list(table.columns) == list(cohort.names)
    validate_frame(table.astype(object).where(table.notna(), None), cohort)  # raises if invalid
    assert table.equals(gan.sample(500, seed=3))
    assert gan.sample_encoded(7, torch.Generator().manual_seed(0)).shape == (
        7,
        gan.transformer.width,
    )


def test_conditional_frequencies_are_the_public_uniform_ones(cohort: Schema) -> None:
    freqs = public_category_frequencies(cohort)
    assert [len(f) for f in freqs] == [2, 3, 2, 2, 2, 2, 2, 2]
    assert all(torch.allclose(f, torch.full_like(f, 1 / len(f))) for f in freqs)
    sampler = CondSampler(cohort, uncond_rate=0.5)
    torch.manual_seed(0)
    cond, col, cat = sampler.fake(40_000, CPU)
    assert (cond.sum(1) == (col >= 0).float()).all()  # one slot set, or none
    assert abs((col < 0).float().mean().item() - 0.5) < 0.01
    smoker = cat[col == 1]  # the 3-category column
    shares = torch.bincount(smoker, minlength=3).float() / smoker.numel()
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.02)


def test_fake_conditions_do_not_depend_on_the_sites_rows(cohort: Schema) -> None:
    # Two tables with very different category frequencies (all "female" vs all "male").
    raw = generate_cohort(300, seed=2)
    tables = [raw.assign(sex="female", smoker="never"), raw.assign(sex="male", smoker="current")]
    conds = []
    for table in tables:
        frame = validate_frame(table.astype(object).where(table.notna(), None), cohort)
        torch.manual_seed(0)
        family = build_generator(cohort, GAN)
        data = torch.from_numpy(family.encode(frame))
        loop = family.local_loop(learning_rate=0.01)
        torch.manual_seed(5)
        batch = loop.private_batch(data[:30])
        conds.append(batch[30:, family.transformer.width : -1])  # the fake rows' conditions
    assert torch.equal(conds[0], conds[1])


@settings(max_examples=25, deadline=None)
@given(k=st.integers(0, 40), fakes=st.integers(1, 30), uncond=st.floats(0.05, 0.95))
def test_private_batch_keeps_every_real_row_once_and_adds_a_fixed_number_of_fakes(
    k: int, fakes: int, uncond: float
) -> None:
    model = ModelSettings(generator="dp-ctgan", gan_uncond_rate=uncond, gan_fakes=fakes)
    family = build_generator(COHORT, model)
    assert isinstance(family, DPCTGAN)
    data = COHORT_ROWS[:k]
    batch = family.local_loop(learning_rate=0.01).private_batch(data)
    width = family.transformer.width
    assert batch.shape == (k + fakes, width + family.cond.width + 1)  # fakes do not follow k
    assert torch.equal(batch[:k, :width], data)
    assert (batch[:k, -1] == 1).all() and (batch[k:, -1] == 0).all()
    # A real row's condition is its own one-hot value in the chosen column, or none.
    cond = batch[:k, width:-1]
    assert (cond.sum(1) <= 1).all()
    for c, span in enumerate(family.cond.spans):
        block = cond[:, family.cond.offsets[c] : family.cond.offsets[c] + span.width]
        chosen = block.sum(1) > 0
        assert torch.equal(block[chosen], data[chosen, span.start : span.stop])


def test_generator_step_is_post_processing_of_the_discriminator(cohort: Schema) -> None:
    # Same D weights and randomness, different real rows: G's update is identical.
    new_g = []
    for seed in (1, 2):
        torch.manual_seed(0)
        family = build_generator(cohort, GAN)
        loop = family.local_loop(learning_rate=0.01)
        torch.manual_seed(9)
        loop.private_batch(_rows(cohort, 50, seed=seed))  # touches no G weight
        loop.after_step()
        new_g.append({k: v for k, v in family.state_dict().items() if k.startswith("generator")})
        assert all(p.grad is None for p in family.private_module().parameters())
    assert all(torch.equal(new_g[0][k], new_g[1][k]) for k in new_g[0])


def test_dp_fit_takes_exactly_the_planned_dp_steps_and_moves_d(
    gan: DPCTGAN, cohort: Schema
) -> None:
    d_before = {k: v for k, v in gan.state_dict().items() if k.startswith("discriminator")}
    seen: list[int] = []
    stats = train_dp(
        gan,
        _rows(cohort, 500),
        steps=12,
        noise_multiplier=2.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        learning_rate=0.01,
        device=CPU,
        seed=0,
        on_step=lambda module: seen.append(1),
    )
    assert stats.steps == 12 and len(seen) == 12
    after = gan.state_dict()
    assert not all(torch.equal(after[k], v) for k, v in d_before.items())
    assert np.isfinite(stats.last_loss)


def test_ghost_clipping_and_plain_training_run(gan: DPCTGAN, cohort: Schema) -> None:
    data = _rows(cohort, 300)
    kw: dict[str, Any] = {"sample_rate": 0.1, "learning_rate": 0.01, "device": CPU, "seed": 0}
    stats = train_dp(
        gan, data, steps=3, noise_multiplier=1.0, max_grad_norm=1.0, clipping="ghost", **kw
    )
    assert stats.steps == 3
    assert train_plain(gan, data, steps=3, **kw).steps == 3


def test_model_settings_validate_the_gan_keys() -> None:
    s = ModelSettings.from_config({"gan-noise": 4, "gan-uncond-rate": 0.25})
    assert (s.gan_noise, s.gan_uncond_rate) == (4, 0.25)
    assert ModelSettings.from_config(s.to_config()) == s
    with pytest.raises(ConfigError, match="gan-uncond-rate"):
        ModelSettings.from_config({"gan-uncond-rate": 1.0})
    with pytest.raises(ConfigError, match="gan-noise"):
        ModelSettings.from_config({"gan-noise": 0})


@pytest.fixture
def _task_identity() -> Iterator[None]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 3
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None  # type: ignore[assignment]


@pytest.mark.usefixtures("_task_identity")
def test_a_site_round_charges_exactly_the_discriminator_steps(
    cohort: Schema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real ClientApp handler, real Opacus noise, real ledger; only the transport is absent.
    cohort.save(tmp_path / "schema.json")
    generate_cohort(300, seed=3)[cohort.names].to_csv(tmp_path / "site.csv", index=False)
    node = {
        "data-path": str(tmp_path / "site.csv"),
        "schema-path": str(tmp_path / "schema.json"),
        "state-dir": str(tmp_path / "state"),
        "site-name": "hospital-a",
        "budget-epsilon": 3.0,
        "device": "cpu",
    }
    d_steps: list[int] = []
    original = AdversarialLoop.private_batch

    def counting(self: AdversarialLoop, real: torch.Tensor) -> torch.Tensor:
        d_steps.append(real.shape[0])
        return original(self, real)

    monkeypatch.setattr(AdversarialLoop, "private_batch", counting)
    run = RunSettings(rounds=1, local_steps=7, epsilon=2.0, schema_path="x", out_dir="y", model=GAN)
    sigma = run.noise_multiplier()
    train = run.train_settings(1, noise_multiplier=sigma, schema_fingerprint=cohort.fingerprint())
    content = RecordDict(
        {
            keys.GLOBAL_ARRAYS: ArrayRecord(build_generator(cohort, GAN).state_dict()),
            keys.TRAIN_CONFIG: ConfigRecord(train.to_config()),
        }
    )
    msg = Message(content=content, dst_node_id=3, message_type="train")
    ctx = Context(run_id=7, node_id=3, node_config=node, state=RecordDict(), run_config={})
    reply = handle_train(msg, ctx).content

    metrics = reply[keys.PRIVACY_METRICS]
    assert len(d_steps) == metrics[keys.STEPS] == 7
    entries = json.loads((tmp_path / "state" / "privacy_ledger.json").read_text())["entries"]
    assert [(e["steps"], e["sample_rate"]) for e in entries] == [(7, run.sample_rate)]
    expected = epsilon_of([(sigma, run.sample_rate, 7)], delta=1e-5)
    assert metrics[keys.EPSILON] == pytest.approx(expected, rel=1e-9)
    assert metrics[keys.EPSILON] == pytest.approx(
        independent_epsilon([(sigma, run.sample_rate, 7)], 1e-5), rel=1e-6
    )
    assert set(reply[keys.UPDATE_ARRAYS].keys()) == set(build_generator(cohort, GAN).state_dict())


def test_the_staged_generator_refuses_a_gan_as_its_covariate_stage(cohort: Schema) -> None:
    # The staged family trains its whole module with one per-row loss; a GAN's generator
    # is not trained by a per-row loss on real rows, so it cannot be a stage.
    settings = ModelSettings(generator="staged", covariate_generator="dp-ctgan")
    with pytest.raises(ConfigError, match="trains only part of its module"):
        build_generator(cohort, settings)
