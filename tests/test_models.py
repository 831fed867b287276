"""Unit tests for the generator plugin (``dp-vae``), its files, DP training and update clipping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from client.errors import TrainingError
from client.site import clip_update
from client.training import TrainStats, train_dp
from shared.cohort import generate_cohort
from shared.config import ModelSettings
from shared.errors import ConfigError, ModelError
from shared.manifest import MANIFEST, WEIGHTS, load_model, save_model
from shared.models import GeneratorFamily, available_families, build_generator
from shared.models.vae import DPVAE, TabularVAE
from shared.schema import Schema
from shared.tables import validate_frame

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]
CPU = torch.device("cpu")


@pytest.fixture
def family(cohort: Schema) -> GeneratorFamily:
    torch.manual_seed(0)
    return build_generator(cohort, ModelSettings())


@pytest.fixture(scope="module")
def encoded_rows(cohort: Schema) -> torch.Tensor:
    """500 encoded rows of the built-in cohort."""
    frame = validate_frame(generate_cohort(500, seed=2), cohort)
    return torch.from_numpy(build_generator(cohort, ModelSettings()).encode(frame))


def _train(
    family: GeneratorFamily, data: torch.Tensor, *, steps: int, sample_rate: float
) -> TrainStats:
    return train_dp(
        family,
        data,
        steps=steps,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=sample_rate,
        learning_rate=0.01,
        device=CPU,
        seed=0,
    )


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------- registry
def test_dp_vae_is_registered_and_builds(family: GeneratorFamily, cohort: Schema) -> None:
    # Assert
    assert "dp-vae" in available_families()
    assert isinstance(family, DPVAE) and family.name == "dp-vae"
    assert isinstance(family.module, TabularVAE)
    assert family.module.data_dim == family.transformer.width == 28
    assert family.private_module() is family.module


def test_state_dict_shapes_follow_schema_and_settings(cohort: Schema) -> None:
    # Execute
    family = build_generator(cohort, ModelSettings(hidden=16, latent=4))

    # Assert: 7 numeric values each get one extra log-std output.
    shapes = {k: tuple(v.shape) for k, v in family.state_dict().items()}
    assert shapes == {
        "enc_hidden.weight": (16, 28),
        "enc_hidden.bias": (16,),
        "enc_out.weight": (8, 16),
        "enc_out.bias": (8,),
        "dec_hidden.weight": (16, 4),
        "dec_hidden.bias": (16,),
        "dec_out.weight": (35, 16),
        "dec_out.bias": (35,),
    }


def test_unknown_generator_lists_available_families(cohort: Schema) -> None:
    with pytest.raises(ConfigError, match=r"unknown generator 'gan'; available: \[.*'dp-vae'.*\]"):
        build_generator(cohort, ModelSettings(generator="gan"))


# ---------------------------------------------------------------------- sampling
def test_sample_is_valid_with_exact_row_count(family: GeneratorFamily, cohort: Schema) -> None:
    # Execute
    table = family.sample(257, seed=1)

    # Assert
    assert len(table) == 257 and list(table.columns) == cohort.names
    assert len(validate_frame(table, cohort)) == 257


def test_sample_in_batches_gives_exact_row_count(family: GeneratorFamily) -> None:
    assert len(family.sample(101, seed=1, batch_size=25)) == 101


def test_sample_same_seed_same_table(family: GeneratorFamily) -> None:
    # Execute
    first, second = family.sample(64, seed=7), family.sample(64, seed=7)
    other = family.sample(64, seed=8)

    # Assert
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(other)


def test_sample_zero_rows_keeps_columns(family: GeneratorFamily, cohort: Schema) -> None:
    # Execute
    table = family.sample(0)

    # Assert
    assert table.shape == (0, 15) and list(table.columns) == cohort.names


def test_sample_negative_rows_is_refused(family: GeneratorFamily) -> None:
    with pytest.raises(ConfigError, match=r"cannot sample a negative number of rows \(-1\)"):
        family.sample(-1)


# --------------------------------------------------------------------- weights
def test_state_dict_round_trip(family: GeneratorFamily, cohort: Schema) -> None:
    # Prepare
    other = build_generator(cohort, ModelSettings())

    # Execute
    other.load_state_dict(family.state_dict())

    # Assert
    assert not _changed(family.state_dict(), other.state_dict())
    pd.testing.assert_frame_equal(family.sample(32, seed=3), other.sample(32, seed=3))


def test_state_dict_is_a_copy(family: GeneratorFamily) -> None:
    # Prepare
    state = family.state_dict()

    # Execute
    state["enc_hidden.bias"].add_(1.0)

    # Assert
    assert not torch.equal(state["enc_hidden.bias"], family.state_dict()["enc_hidden.bias"])


def test_load_state_dict_accepts_opacus_prefix(family: GeneratorFamily, cohort: Schema) -> None:
    # Prepare
    prefixed = {f"_module.{k}": v for k, v in family.state_dict().items()}
    other = build_generator(cohort, ModelSettings())

    # Execute
    other.load_state_dict(prefixed)

    # Assert
    assert not _changed(family.state_dict(), other.state_dict())


def test_load_state_dict_refuses_wrong_shape(family: GeneratorFamily) -> None:
    # Prepare
    state = family.state_dict()
    state["dec_out.bias"] = torch.zeros(3)

    # Execute / Assert
    with pytest.raises(ModelError, match=r"dec_out.bias: shape \(3,\) != \(35,\)"):
        family.load_state_dict(state)


def test_load_state_dict_refuses_missing_and_unexpected_keys(family: GeneratorFamily) -> None:
    # Prepare
    state = family.state_dict()
    state["extra.weight"] = state.pop("enc_out.bias")

    # Execute / Assert
    expected = re.escape("missing enc_out.bias; unexpected extra.weight")
    with pytest.raises(ModelError, match=expected):
        family.load_state_dict(state)


# -------------------------------------------------------------------- manifest
def test_save_and_load_model_round_trip(family: GeneratorFamily, tmp_path: Path) -> None:
    # Execute
    folder = save_model(tmp_path / "model", family, extra={"epsilon": 1.5})
    loaded, manifest = load_model(folder)

    # Assert
    assert manifest["generator"] == "dp-vae" and manifest["epsilon"] == 1.5
    assert manifest["schema_fingerprint"] == family.schema.fingerprint()
    assert loaded.schema == family.schema and loaded.settings == family.settings
    pd.testing.assert_frame_equal(loaded.sample(50, seed=4), family.sample(50, seed=4))


def test_tampered_weights_are_corrupt(family: GeneratorFamily, tmp_path: Path) -> None:
    # Prepare
    folder = save_model(tmp_path / "model", family)
    weights = folder / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))

    # Execute / Assert
    with pytest.raises(ModelError, match="is corrupt or was replaced"):
        load_model(folder)


def test_missing_weights_are_refused(family: GeneratorFamily, tmp_path: Path) -> None:
    # Prepare
    folder = save_model(tmp_path / "model", family)
    (folder / WEIGHTS).unlink()

    # Execute / Assert
    with pytest.raises(ModelError, match=r"weights file .* is missing"):
        load_model(folder)


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"has no {MANIFEST}"):
        load_model(tmp_path)


def test_manifest_with_edited_schema_is_refused(family: GeneratorFamily, tmp_path: Path) -> None:
    # Prepare
    folder = save_model(tmp_path / "model", family)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["schema"]["columns"][0]["max"] = 120
    (folder / MANIFEST).write_text(json.dumps(manifest))

    # Execute / Assert
    with pytest.raises(ModelError, match="does not match its fingerprint"):
        load_model(folder)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"hidden": -1}, r"manifest\.json is incomplete or invalid .*hidden.*4\.\.4096"),
        ({"hidden": "wide"}, r"manifest\.json is incomplete or invalid .*hidden"),
        ({"colour": "red"}, r"manifest\.json is incomplete or invalid .*unknown model setting"),
        ({"hidden": 48}, r"model: weights do not fit .*no longer belong together"),
    ],
)
def test_edited_model_settings_are_refused_naming_the_manifest(
    family: GeneratorFamily, tmp_path: Path, edit: dict[str, object], expected: str
) -> None:
    folder = save_model(tmp_path / "model", family)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["model_settings"].update(edit)
    (folder / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ModelError, match=expected):
        load_model(folder)


def test_manifest_of_another_format_is_refused(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "pickle/9"}))

    # Execute / Assert
    with pytest.raises(ModelError, match="is not a fedsynth-generator/1 manifest"):
        load_model(tmp_path)


# -------------------------------------------------------------------- training
def test_train_dp_runs_requested_steps_and_changes_weights(
    family: GeneratorFamily, encoded_rows: torch.Tensor
) -> None:
    # Prepare
    before = family.state_dict()

    # Execute
    stats = _train(family, encoded_rows, steps=5, sample_rate=0.05)

    # Assert
    assert stats.steps == 5
    assert stats.mean_batch > 0 and np.isfinite(stats.last_loss)
    assert _changed(before, family.state_dict())
    assert set(family.state_dict()) == set(before)  # Opacus hooks and prefixes are gone


def test_train_dp_counts_empty_batches_as_steps(
    family: GeneratorFamily, encoded_rows: torch.Tensor
) -> None:
    # Prepare
    before = family.state_dict()

    # Execute
    stats = _train(family, encoded_rows[:3], steps=8, sample_rate=0.01)

    # Assert
    assert stats.steps == 8
    assert stats.empty_batches > 0
    assert _changed(before, family.state_dict())  # noise-only steps still move the weights


@pytest.mark.parametrize(
    ("steps", "rows", "expected"),
    [(0, 10, "steps must be >= 1, got 0"), (3, 0, "the site's table has no rows")],
)
def test_train_dp_refuses_nothing_to_do(
    family: GeneratorFamily, encoded_rows: torch.Tensor, steps: int, rows: int, expected: str
) -> None:
    with pytest.raises(TrainingError, match=expected):
        _train(family, encoded_rows[:rows], steps=steps, sample_rate=0.1)


# ---------------------------------------------------------------- update clipping
def test_clip_update_scales_to_bound() -> None:
    # Prepare
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}

    # Execute
    clipped, was_clipped = clip_update(update, 1.0)

    # Assert
    assert was_clipped
    torch.testing.assert_close(clipped["a"], torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(clipped["b"], torch.tensor([[0.8]]))


def _norm(update: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in update.values())))


_TENSORS = hnp.arrays(
    np.float32, hnp.array_shapes(max_dims=2, max_side=6), elements=st.floats(-1e3, 1e3, width=32)
)


@settings(max_examples=30, deadline=None)
@given(st.lists(_TENSORS, min_size=1, max_size=3), st.floats(1e-3, 1e3))
def test_clip_update_bounds_the_norm(arrays: list[np.ndarray], bound: float) -> None:
    # Prepare
    update = {f"p{i}": torch.from_numpy(a) for i, a in enumerate(arrays)}
    norm = _norm(update)

    # Execute
    clipped, was_clipped = clip_update(update, bound)

    # Assert: float32 rounding may overshoot by a few ulps (see the strict test below).
    assert _norm(clipped) <= bound * (1 + 1e-6)
    assert was_clipped == (norm > bound)
    if not was_clipped:
        assert clipped is update
    else:
        assert _norm(clipped) == pytest.approx(bound, rel=1e-5)


def test_clip_update_never_exceeds_the_bound() -> None:
    # Prepare: seven ones (norm √7) clipped to 0.85 come out at 0.85000002.
    update = {"w": torch.ones(7)}

    # Execute
    clipped, _ = clip_update(update, 0.85)

    # Assert
    assert _norm(clipped) <= 0.85


def test_sample_distribution_is_a_softmax_per_span(family: GeneratorFamily) -> None:
    """The vectorised softmax equals one softmax per one-hot span of the decoder output."""
    vae = family.module
    assert isinstance(vae, TabularVAE)
    with torch.no_grad():
        for p in vae.parameters():  # large logits, so a shared max would underflow
            p.mul_(8.0)
        dist = family.sample_distribution(64, torch.Generator().manual_seed(3))
        z = torch.randn(64, vae.latent, generator=torch.Generator().manual_seed(3))
        dec = vae.decode(z).double()
    for span in family.transformer.spans:
        got = dist.params[:, span.start : span.start + span.width]
        block = dec[:, span.start : span.start + span.width]
        if span.kind == "numeric":
            np.testing.assert_allclose(got[:, 0], torch.tanh(block[:, 0]).numpy(), rtol=1e-6)
        else:
            np.testing.assert_allclose(got, torch.softmax(block, dim=1).numpy(), atol=1e-12)
            np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
