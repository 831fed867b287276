"""Checkpoints a restarted coordinator resumes from: round trip and every corruption refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from server.checkpoint import CheckpointStore
from server.errors import CheckpointError

IDENTITY = {"rounds": 3, "schema_fingerprint": "abc"}


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "checkpoints", IDENTITY)
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    store.save(1, state, {"site-0": {"epsilon": 0.5}}, [{"round": 1}])
    store.save(2, {k: v * 2 for k, v in state.items()}, {"site-0": {"epsilon": 0.7}}, [])
    return store


def test_latest_round_round_trips_and_older_weights_are_removed(store: CheckpointStore) -> None:
    ckpt = store.load_latest()

    assert ckpt is not None and ckpt.round == 2
    assert torch.equal(ckpt.state["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3) * 2)
    assert ckpt.sites == {"site-0": {"epsilon": 0.7}}
    assert [p.name for p in store.folder.glob("round-*.pt")] == ["round-0002.pt"]


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "none", IDENTITY).load_latest() is None


def test_tampered_weights_are_detected_by_the_checksum(store: CheckpointStore) -> None:
    weights = store.folder / "round-0002.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=r"corrupt or was replaced.*checkpoint of round 2"):
        store.load_latest()


def test_missing_weights_are_refused(store: CheckpointStore) -> None:
    (store.folder / "round-0002.pt").unlink()

    with pytest.raises(CheckpointError, match="is missing"):
        store.load_latest()


@pytest.mark.parametrize("text", ["{", "[]", '{"round": "two"}', ""])
def test_damaged_pointer_is_refused_with_the_fix(store: CheckpointStore, text: str) -> None:
    (store.folder / "latest.json").write_text(text)

    with pytest.raises(CheckpointError, match=r"is damaged.*delete the checkpoints folder"):
        store.load_latest()


def test_checkpoint_of_other_settings_is_refused(store: CheckpointStore) -> None:
    other = CheckpointStore(store.folder, {**IDENTITY, "rounds": 4})

    with pytest.raises(CheckpointError, match="different settings or schema"):
        other.load_latest()


def test_pointer_edited_to_other_weights_is_refused(store: CheckpointStore) -> None:
    doc = json.loads((store.folder / "latest.json").read_text())
    doc["sha256"] = "0" * 64
    (store.folder / "latest.json").write_text(json.dumps(doc))

    with pytest.raises(CheckpointError, match="does not match"):
        store.load_latest()
