"""What a site sends: the ClientApp's reply, inspected field by field.

These run the real ClientApp handler (real Opacus training, real ledger) on a
real Flower ``Message``; only the transport is absent (end-to-end tests cover it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import handle_train
from shared import keys
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.models import build_generator

ROWS = 300


@pytest.fixture(autouse=True)
def _identity(_task_identity: None) -> None:
    """Every test here runs as a ClientApp process would."""


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Any]:
    """A site folder: valid table, schema file, empty state dir."""
    schema = cohort_schema()
    schema.save(tmp_path / "schema.json")
    generate_cohort(ROWS, seed=3)[schema.names].to_csv(tmp_path / "site.csv", index=False)
    return {
        "data-path": str(tmp_path / "site.csv"),
        "schema-path": str(tmp_path / "schema.json"),
        "state-dir": str(tmp_path / "state"),
        "site-name": "hospital-a",
        "budget-epsilon": 3.0,
        "device": "cpu",
    }


def train_message(*, steps: int = 4, epsilon: float = 2.0, rnd: int = 1) -> Message:
    schema = cohort_schema()
    torch.manual_seed(0)
    model = build_generator(schema, ModelSettings())
    settings = RunSettings(
        rounds=1, local_steps=steps, epsilon=epsilon, schema_path="x", out_dir="y"
    )
    train = settings.train_settings(
        rnd, noise_multiplier=settings.noise_multiplier(), schema_fingerprint=schema.fingerprint()
    )
    content = RecordDict(
        {
            keys.GLOBAL_ARRAYS: ArrayRecord(model.state_dict()),
            keys.TRAIN_CONFIG: ConfigRecord(train.to_config()),
        }
    )
    return Message(content=content, dst_node_id=3, message_type="train")


def reply_for(node_config: dict[str, Any], msg: Message | None = None) -> Message:
    ctx = Context(run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config={})
    return handle_train(msg or train_message(), ctx)


def ledger_entries(state_dir: str) -> int:
    path = Path(state_dir) / "privacy_ledger.json"
    return len(json.loads(path.read_text())["entries"]) if path.exists() else 0


def test_reply_contains_only_the_agreed_fields(site: dict[str, Any]) -> None:
    reply = reply_for(site)

    content = reply.content
    assert set(content.keys()) == set(keys.SITE_REPLY_FIELDS)
    assert set(content[keys.PRIVACY_METRICS].keys()) == set(
        keys.SITE_REPLY_FIELDS[keys.PRIVACY_METRICS]
    )
    assert set(content[keys.SITE_INFO].keys()) == set(keys.SITE_REPLY_FIELDS[keys.SITE_INFO])
    model_keys = set(build_generator(cohort_schema(), ModelSettings()).state_dict())
    assert set(content[keys.UPDATE_ARRAYS].keys()) == model_keys
    assert content[keys.SITE_INFO][keys.STATUS] == keys.STATUS_TRAINED
    assert content[keys.SITE_INFO][keys.SITE_NAME] == "hospital-a"


def test_reply_reports_cumulative_epsilon_and_steps(site: dict[str, Any]) -> None:
    first = reply_for(site).content[keys.PRIVACY_METRICS]
    second = reply_for(site, train_message(rnd=2)).content[keys.PRIVACY_METRICS]

    assert first[keys.STEPS] == 4 and first[keys.TOTAL_STEPS] == 4
    assert second[keys.TOTAL_STEPS] == 8
    assert second[keys.EPSILON] > first[keys.EPSILON] > 0
    assert ledger_entries(site["state-dir"]) == 2


def test_update_is_clipped_to_the_bound(site: dict[str, Any]) -> None:
    msg = train_message(steps=6)
    cfg = msg.content[keys.TRAIN_CONFIG]
    cfg["update-clip-norm"] = 0.05

    update = reply_for(site, msg).content[keys.UPDATE_ARRAYS].to_torch_state_dict()

    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in update.values()))
    assert float(norm) <= 0.05
    assert reply_for(site, msg).content[keys.PRIVACY_METRICS][keys.UPDATE_NORM_CLIPPED] == 1.0


def test_a_repeated_request_resends_the_same_update_without_a_new_charge(
    site: dict[str, Any],
) -> None:
    # A coordinator that crashed before aggregating resumes from its checkpoint and
    # asks again for the same round with the same global weights.
    first = reply_for(site, train_message()).content
    entries = ledger_entries(site["state-dir"])

    again = reply_for(site, train_message()).content

    ua, ub = (r[keys.UPDATE_ARRAYS].to_torch_state_dict() for r in (first, again))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)
    assert again[keys.PRIVACY_METRICS][keys.EPSILON] == first[keys.PRIVACY_METRICS][keys.EPSILON]
    assert again[keys.PRIVACY_METRICS][keys.TOTAL_STEPS] == 4
    assert ledger_entries(site["state-dir"]) == entries == 1
    # Any other request (here the next round) trains and is charged.
    changed = reply_for(site, train_message(rnd=2)).content
    assert changed[keys.PRIVACY_METRICS][keys.TOTAL_STEPS] == 8
    assert ledger_entries(site["state-dir"]) == 2


def test_a_damaged_replay_record_charges_again_rather_than_sending_unaccounted(
    site: dict[str, Any],
) -> None:
    reply_for(site, train_message())
    (Path(site["state-dir"]) / "last_update.pt").write_bytes(b"damaged")

    again = reply_for(site, train_message()).content

    assert again[keys.SITE_INFO][keys.STATUS] == keys.STATUS_TRAINED
    assert ledger_entries(site["state-dir"]) == 2


def test_row_count_is_sent_only_when_the_site_opts_in(site: dict[str, Any]) -> None:
    assert keys.NUM_ROWS not in reply_for(site).content[keys.PRIVACY_METRICS]

    opted = reply_for({**site, "share-row-count": True}).content[keys.PRIVACY_METRICS]

    assert opted[keys.NUM_ROWS] == ROWS


def test_training_seconds_are_sent_only_when_the_site_opts_in(site: dict[str, Any]) -> None:
    assert keys.TRAIN_SECONDS not in reply_for(site).content[keys.PRIVACY_METRICS]

    opted = reply_for({**site, "share-timing": True}, train_message(rnd=2))
    seconds = opted.content[keys.PRIVACY_METRICS][keys.TRAIN_SECONDS]

    assert isinstance(seconds, float) and seconds >= 0.0


def test_budget_exhaustion_declines_without_update_or_charge(site: dict[str, Any]) -> None:
    reply_for(site, train_message(epsilon=2.9))  # spends 2.9 of 3.0; twice would be 3.40
    before = ledger_entries(site["state-dir"])

    reply = reply_for(site, train_message(epsilon=2.9, rnd=2))

    info = reply.content[keys.SITE_INFO]
    assert info[keys.STATUS] == keys.STATUS_DECLINED
    assert "declines" in info[keys.REASON] and "above its total budget" in info[keys.REASON]
    assert keys.UPDATE_ARRAYS not in reply.content
    assert ledger_entries(site["state-dir"]) == before
    assert reply.content[keys.PRIVACY_METRICS][keys.EPSILON] == pytest.approx(2.9, abs=0.01)


BAD_TABLES = {
    "missing column": lambda df: df.drop(columns=["sbp"]),
    "unseen category": lambda df: df.assign(smoker=["vaping", *df["smoker"][1:]]),
    "out of range": lambda df: df.assign(age=[130, *df["age"][1:]]),
    "NaN in non-nullable": lambda df: df.assign(sex=[None, *df["sex"][1:]]),
    "non-numeric string": lambda df: df.assign(sbp=["high", *df["sbp"][1:].astype(str)]),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_table_declines_without_update_charge_or_values(
    site: dict[str, Any], case: str
) -> None:
    path = Path(site["data-path"])
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    BAD_TABLES[case](frame).to_csv(path, index=False)

    reply = reply_for(site)

    info = reply.content[keys.SITE_INFO]
    assert info[keys.STATUS] == keys.STATUS_DECLINED
    # A fixed text: the number of problems depends on which cells are bad.
    assert info[keys.REASON] == (
        "the site's table failed schema validation; details are in the site's log"
    )
    for private_value in ("vaping", "130", "high", "line 2"):
        assert private_value not in info[keys.REASON]
    assert keys.UPDATE_ARRAYS not in reply.content
    assert ledger_entries(site["state-dir"]) == 0
    assert not (Path(site["state-dir"]) / "privacy_ledger.json").exists()


def test_a_decline_after_earlier_rounds_reports_the_ledgers_cumulative_epsilon(
    site: dict[str, Any],
) -> None:
    # Prepare: round 1 trained and was charged; then the table went bad.
    first = reply_for(site, train_message()).content[keys.PRIVACY_METRICS]
    Path(site["data-path"]).write_text("age\n1\n")

    reply = reply_for(site, train_message(rnd=2)).content

    # Assert: declined, and the figures are the ledger's, never 0.
    assert reply[keys.SITE_INFO][keys.STATUS] == keys.STATUS_DECLINED
    assert reply[keys.PRIVACY_METRICS][keys.EPSILON] == pytest.approx(first[keys.EPSILON])
    assert reply[keys.PRIVACY_METRICS][keys.TOTAL_STEPS] == 4


def test_under_secure_aggregation_a_repeated_request_is_trained_and_charged_again(
    site: dict[str, Any], _task_identity: None
) -> None:
    # A stored update re-sent into a second secure sum over other sites would show
    # alone in the difference of the two sums.
    from client.app import train_round

    ctx = Context(run_id=7, node_id=3, node_config=site, state=RecordDict(), run_config={})
    train_round(train_message(), ctx, secure=True)
    _, _, again = train_round(train_message(), ctx, secure=True)

    assert again.trained and again.total_steps == 8
    assert ledger_entries(site["state-dir"]) == 2


def test_empty_file_declines(site: dict[str, Any]) -> None:
    Path(site["data-path"]).write_text("")

    reply = reply_for(site)

    assert reply.content[keys.SITE_INFO][keys.STATUS] == keys.STATUS_DECLINED
    assert keys.UPDATE_ARRAYS not in reply.content


def test_schema_mismatch_declines(site: dict[str, Any]) -> None:
    doc = json.loads(Path(site["schema-path"]).read_text())
    doc["columns"][1]["categories"] = ["F", "M"]
    Path(site["schema-path"]).write_text(json.dumps(doc))

    reply = reply_for(site)

    assert reply.content[keys.SITE_INFO][keys.STATUS] == keys.STATUS_DECLINED
    reason = reply.content[keys.SITE_INFO][keys.REASON]
    assert "differs from the server's" in reason and "consortium's current schema" in reason


def test_corrupt_ledger_declines_and_is_not_reset(site: dict[str, Any]) -> None:
    reply_for(site)
    ledger = Path(site["state-dir"]) / "privacy_ledger.json"
    ledger.write_text(ledger.read_text().replace('"steps": 4', '"steps": 1'))

    reply = reply_for(site)

    assert reply.content[keys.SITE_INFO][keys.STATUS] == keys.STATUS_DECLINED
    assert "ledger" in reply.content[keys.SITE_INFO][keys.REASON]
    assert '"steps": 1' in ledger.read_text()  # left as found for the operator to restore


def test_noise_is_not_determined_by_anything_the_server_sends(
    site: dict[str, Any], tmp_path: Path
) -> None:
    # Two real sites with identical data receive the identical message.
    other = {**site, "state-dir": str(tmp_path / "state-b"), "site-name": "hospital-b"}
    msg = train_message()

    a = reply_for(site, msg).content
    b = reply_for(other, msg).content

    assert a[keys.SITE_INFO][keys.NOISE_SEED] == "secret"
    ua = a[keys.UPDATE_ARRAYS].to_torch_state_dict()
    ub = b[keys.UPDATE_ARRAYS].to_torch_state_dict()
    assert any(not torch.equal(ua[k], ub[k]) for k in ua)


def test_importing_the_client_app_does_not_import_torch() -> None:
    # Flower starts a ClientApp process per message; secure aggregation's protocol
    # messages must not pay for torch and Opacus.
    code = "import sys, client.app; print('torch' in sys.modules, 'opacus' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]
