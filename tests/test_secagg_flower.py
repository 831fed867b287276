"""Secure aggregation over real Flower Messages and the real ClientApp router.

Three simulated sites run the real ClientApp (real Opacus training, real
ledgers) behind an in-process transport that hands each ``Message`` to the
ClientApp and its reply back, and can make chosen sites go silent from a stage
on. The same sites, on copies of their folders, also run a plain round, so the
true per-site updates are known (simulation noise seeds are deterministic).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from server.app import initial_model, run_federation
from server.errors import RoundFailedError
from server.secagg import secure_round
from server.strategy import SiteAveraging
from shared import keys
from shared.cohort import cohort_schema, generate_cohort
from shared.config import RunSettings
from shared.schema import Schema
from shared.secagg.vectors import flatten_state

SITES = 3
STAGES = [keys.SECAGG_SETUP, keys.SECAGG_SHARE_KEYS, keys.SECAGG_TRAIN, keys.SECAGG_UNMASK]


class InProcessGrid(Grid):
    """Delivers each message to the ClientApp of its node in this process.

    ``silent[action]`` lists nodes that stop answering from that stage on (a dropout).
    """

    def __init__(self, run_config: dict[str, Any], silent: dict[str, set[int]] | None = None):
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": nid - 101},
                state=RecordDict(),
                run_config=run_config,
            )
            for nid in range(101, 101 + SITES)
        }
        self.silent = silent or {}
        self.received: dict[str, list[Message]] = {}

    def _gone(self, nid: int, action: str) -> bool:
        if action == keys.PLAN_CHECK:
            return False  # the run's plan comes before every stage; a dropout comes later
        stage = STAGES.index(action) if action in STAGES else 0
        return any(nid in nodes and STAGES.index(a) <= stage for a, nodes in self.silent.items())

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            action = msg.metadata.message_type.partition(".")[2]
            if self._gone(nid, action):
                continue
            TaskIdentity.node_id = nid
            reply = client_app(msg, self.contexts[nid])
            self.received.setdefault(action or "train", []).append(reply)
            out.append(reply)
        return out

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def set_run(self, run: Any) -> None:  # pragma: no cover - unused transport API
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *a: Any, **k: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(autouse=True, scope="module")
def _task_identity() -> Iterator[None]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 101
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def sites_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("secagg-sites")
    schema = cohort_schema()
    schema.save(root / "schema.json")
    frame = generate_cohort(600, seed=5)[schema.names]
    for i in range(SITES):
        (root / "sites" / f"site-{i}" / "state").mkdir(parents=True)
        frame.iloc[i::SITES].to_csv(root / "sites" / f"site-{i}" / "data.csv", index=False)
    return root


def make_run(template: Path, dest: Path, **extra: Any) -> tuple[RunSettings, dict[str, Any]]:
    shutil.copytree(template, dest)
    cfg: dict[str, Any] = {
        "rounds": 1,
        "local-steps": 2,
        "epsilon": 2.0,
        "seed": 3,
        "device": "cpu",
        "schema-path": str(dest / "schema.json"),
        "sites-dir": str(dest / "sites"),
        "out-dir": str(dest / "out"),
        "synthetic-rows": 50,
        "min-sites": 1,
        "round-timeout": 5.0,
        **extra,
    }
    return RunSettings.from_run_config(cfg), cfg


def round_inputs(
    settings: RunSettings,
) -> tuple[SiteAveraging, dict[str, torch.Tensor], ConfigRecord]:
    schema = Schema.load(settings.schema_path)
    state = initial_model(schema, settings).state_dict()
    train = settings.train_settings(
        1, noise_multiplier=settings.noise_multiplier(), schema_fingerprint=schema.fingerprint()
    )
    config = ConfigRecord(cast(Any, train.to_config()))
    return SiteAveraging(min_sites=settings.min_sites, expected_keys=set(state)), state, config


def plain_updates(template: Path, dest: Path) -> dict[int, np.ndarray]:
    """Each site's true clipped update, from a plain round on a copy of the sites."""
    settings, cfg = make_run(template, dest)
    strategy, state, config = round_inputs(settings)
    grid = InProcessGrid(cfg)
    msgs = [
        Message(
            content=RecordDict({keys.GLOBAL_ARRAYS: ArrayRecord(state), keys.TRAIN_CONFIG: config}),
            dst_node_id=nid,
            message_type="train",
        )
        for nid in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(msgs)
    parsed = strategy.parse_replies(1, replies)
    return {r.node_id: flatten_state(cast(Any, r.update)) for r in parsed}


@pytest.fixture(scope="module")
def true_updates(
    sites_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, np.ndarray]:
    return plain_updates(sites_template, tmp_path_factory.mktemp("plain") / "run")


def secure(
    template: Path, dest: Path, silent: dict[str, set[int]] | None = None
) -> tuple[np.ndarray, InProcessGrid, float]:
    settings, cfg = make_run(template, dest, **{"secure-aggregation": True})
    strategy, state, config = round_inputs(settings)
    grid = InProcessGrid(cfg, silent)
    mean, info = secure_round(grid, strategy, 1, state, config, settings)
    return flatten_state(mean), grid, info.quantisation_step


def test_server_receives_only_masked_vectors(
    sites_template: Path, tmp_path: Path, true_updates: dict[int, np.ndarray]
) -> None:
    _, grid, _ = secure(sites_template, tmp_path / "run")

    received = grid.received[keys.SECAGG_TRAIN]
    assert len(received) == SITES
    for reply in received:
        assert set(reply.content.keys()) == set(keys.SECAGG_REPLY_FIELDS)
        # Whether this site's own update hit its bound is not sent either.
        assert keys.UPDATE_NORM_CLIPPED not in reply.content[keys.PRIVACY_METRICS]
        masked = reply.content[keys.MASKED_UPDATE][keys.MASKED_VECTOR].numpy().astype(np.float64)
        truth = true_updates[reply.metadata.src_node_id]
        # Uniform masks make |corr| ~ N(0, 1/n); 5 standard deviations is 5/sqrt(n).
        bound = 5 / np.sqrt(len(truth))
        assert len(masked) == len(truth) > 1000
        assert abs(np.corrcoef(masked, truth)[0, 1]) < bound
        assert np.std(truth) > 0  # the update is not trivially constant


def test_secure_mean_equals_fedavg_within_quantisation_error(
    sites_template: Path, tmp_path: Path, true_updates: dict[int, np.ndarray]
) -> None:
    mean, _, step = secure(sites_template, tmp_path / "run")

    fedavg = np.mean(list(true_updates.values()), axis=0)
    # Each site's stochastic rounding is off by < one level, so the mean is too;
    # float32 storage of the result adds at most ~1e-7 relative.
    assert step == pytest.approx(2 * 10.0 / (2**24 - 1))
    assert np.abs(mean - fedavg).max() <= step + 1e-6 * np.abs(fedavg).max()


@pytest.mark.parametrize(("stage", "survivors"), [(keys.SECAGG_TRAIN, 2), (keys.SECAGG_UNMASK, 3)])
def test_one_dropout_at_threshold_two_still_aggregates(
    sites_template: Path,
    tmp_path: Path,
    true_updates: dict[int, np.ndarray],
    stage: str,
    survivors: int,
) -> None:
    mean, _, step = secure(sites_template, tmp_path / "run", {stage: {102}})

    kept = [u for nid, u in true_updates.items() if nid != 102 or survivors == 3]
    assert np.abs(mean - np.mean(kept, axis=0)).max() <= step + 1e-6


@pytest.mark.parametrize("stage", STAGES)
def test_two_dropouts_abort_and_release_nothing(
    sites_template: Path, tmp_path: Path, stage: str
) -> None:
    settings, cfg = make_run(sites_template, tmp_path / "run", **{"secure-aggregation": True})
    grid = InProcessGrid(cfg, {stage: {101, 103}})

    with pytest.raises(RoundFailedError, match=r"aborted under secure aggregation.*Nothing was"):
        run_federation(grid, settings)

    out = Path(settings.out_dir)
    assert not (out / "model").exists() and not (out / "synthetic.csv").exists()
    assert not list(out.glob("checkpoints/*"))


def test_site_without_protocol_state_refuses_before_charging_its_ledger(
    sites_template: Path, tmp_path: Path
) -> None:
    settings, cfg = make_run(sites_template, tmp_path / "run", **{"secure-aggregation": True})
    _, state, config = round_inputs(settings)
    grid = InProcessGrid(cfg)
    msg = Message(
        content=RecordDict(
            {
                keys.GLOBAL_ARRAYS: ArrayRecord(state),
                keys.TRAIN_CONFIG: config,
                keys.SECAGG: ConfigRecord({keys.SA_CONTEXT: b"x", keys.SA_PEERS: [1, 2]}),
            }
        ),
        dst_node_id=101,
        message_type=f"train.{keys.SECAGG_TRAIN}",
    )

    (reply,) = grid.send_and_receive([msg])

    assert reply.has_error() and "no secure aggregation state" in reply.error.reason
    assert not (tmp_path / "run" / "sites" / "site-0" / "state" / "privacy_ledger.json").exists()


@pytest.mark.parametrize("plan_check", [True, False])
def test_sites_out_of_budget_stop_a_secure_round_before_anyone_is_charged(
    sites_template: Path, tmp_path: Path, request: pytest.FixtureRequest, plan_check: bool
) -> None:
    # Prepare: sites 0 and 1 already spent more than the run's ε in an earlier run, so
    # one masked update arrives, under the protocol's threshold of 2.
    from client.ledger import PrivacyLedger
    from client.settings import LEDGER_FILE

    settings, cfg = make_run(
        sites_template, tmp_path / "run", **{"secure-aggregation": True, "min-sites": 3}
    )
    for site in ("site-0", "site-1"):
        state_dir = Path(cfg["sites-dir"]) / site / "state"
        ledger = PrivacyLedger.open(state_dir / LEDGER_FILE, site=site)
        ledger.record(
            run="earlier", server_round=1, noise_multiplier=0.6, sample_rate=0.5, steps=400,
            max_grad_norm=1.0,
        )  # fmt: skip

    if not plan_check:
        request.getfixturevalue("_no_plan_check")

    # Execute: the run's plan goes out first; each round announces its training at key set-up.
    with pytest.raises(RoundFailedError) as failed:
        run_federation(InProcessGrid(cfg), settings)

    # Assert: the two refused the plan (or, without it, the set-up), so the run stopped
    # before site-2 trained.
    message = str(failed.value)
    if plan_check:
        assert "only 1 site(s) (site-2) can afford the whole run" in message
        assert message.count("cannot finish this run") == 2
    else:
        assert "stopped before training" in message
        assert message.count("would raise its cumulative ε") == 2
    assert "sites remove NAME" in message
    untouched = Path(cfg["sites-dir"]) / "site-2" / "state" / LEDGER_FILE
    assert not untouched.exists() or PrivacyLedger.open(untouched, site="site-2").entries == []


def test_the_plan_counts_secure_aggregations_threshold_not_only_min_sites(
    sites_template: Path, tmp_path: Path
) -> None:
    # Prepare: 3 sites, a threshold of 3, --min-sites 2; site-0 cannot finish the run.
    # Two sites able to finish meet --min-sites, but no round could reach the threshold.
    from client.ledger import PrivacyLedger
    from client.settings import LEDGER_FILE

    settings, cfg = make_run(
        sites_template,
        tmp_path / "run",
        **{"secure-aggregation": True, "min-sites": 2, "secagg-threshold": 3},
    )
    state_dir = Path(cfg["sites-dir"]) / "site-0" / "state"
    PrivacyLedger.open(state_dir / LEDGER_FILE, site="site-0").record(
        run="earlier", server_round=1, noise_multiplier=0.6, sample_rate=0.5, steps=400,
        max_grad_norm=1.0,
    )  # fmt: skip

    # Execute
    with pytest.raises(RoundFailedError) as failed:
        run_federation(InProcessGrid(cfg), settings)

    # Assert: refused by the plan, naming the threshold; nobody was charged.
    message = str(failed.value)
    assert "only 2 site(s) (site-1, site-2) can afford the whole run" in message
    assert "secure aggregation's threshold of 3 for 3 sites" in message
    for site in ("site-1", "site-2"):
        ledger = Path(cfg["sites-dir"]) / site / "state" / LEDGER_FILE
        assert not ledger.exists() or PrivacyLedger.open(ledger, site=site).entries == []


class ReplayingGrid(InProcessGrid):
    """Delivers node 101's masked-input request a second time (a replaying server)."""

    second: Message | None = None

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        out = list(super().send_and_receive(messages, timeout=timeout))
        for msg in messages:
            if msg.metadata.dst_node_id == 101 and msg.metadata.message_type.endswith(
                keys.SECAGG_TRAIN
            ):
                TaskIdentity.node_id = 101
                self.second = client_app(msg, self.contexts[101])
        return out


def test_a_site_answers_one_input_request_per_secure_round(
    sites_template: Path, tmp_path: Path
) -> None:
    # Two inputs under the same pairwise masks would cancel the masks in their
    # difference, so a repeated request is refused before any training or charge.
    from client.ledger import PrivacyLedger

    settings, cfg = make_run(sites_template, tmp_path / "run", **{"secure-aggregation": True})
    strategy, state, config = round_inputs(settings)
    grid = ReplayingGrid(cfg)

    secure_round(grid, strategy, 1, state, config, settings)

    assert grid.second is not None and grid.second.has_error()
    assert "already answered this secure round" in grid.second.error.reason
    ledger_path = tmp_path / "run" / "sites" / "site-0" / "state" / "privacy_ledger.json"
    ledger = PrivacyLedger.open(ledger_path, site="site-0")
    assert len(ledger.entries) == 1
