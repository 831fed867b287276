"""SIGKILL a real site process mid-round: the recorded spend never goes down.

Each round runs in its own Python process (as Flower runs each ClientApp
message), with real Opacus training and the real ledger. Processes are killed
at several moments (during start-up, validation and training); afterwards the
ledger must still open, hold every completed round, and report an ε no lower
than before.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger
from shared.cohort import cohort_schema, generate_cohort

pytestmark = pytest.mark.slow
DELTA = 1e-5

ROUND_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from client.settings import SiteSettings
    from client.site import run_site_round
    from shared.config import ModelSettings, RunSettings
    from shared.models import build_generator
    from shared.schema import Schema
    root, rnd, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    schema = Schema.load(f"{root}/schema.json")
    site = SiteSettings(site_name="h", data_path=f"{root}/site.csv", schema_path=f"{root}/schema.json",
                        state_dir=f"{root}/state", budget_epsilon=50.0, device="cpu")
    settings = RunSettings(rounds=1, local_steps=steps, epsilon=1.0, schema_path="s", out_dir="o")
    train = settings.train_settings(rnd, noise_multiplier=1.5, schema_fingerprint=schema.fingerprint())
    torch.manual_seed(0)
    state = build_generator(schema, ModelSettings()).state_dict()
    run_site_round(site, train, state, run="kill-test")
    print("ROUND-DONE", flush=True)
    """
)


def start_round(root: Path, rnd: int, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ROUND_SCRIPT, str(root), str(rnd), str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def spent(root: Path) -> tuple[int, float]:
    ledger = PrivacyLedger.open(root / "state" / "privacy_ledger.json", site="h")
    return len(ledger.entries), ledger.epsilon(delta=DELTA)


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    schema = cohort_schema()
    schema.save(tmp_path / "schema.json")
    generate_cohort(400, seed=5)[schema.names].to_csv(tmp_path / "site.csv", index=False)
    return tmp_path


def test_sigkill_mid_round_never_lowers_recorded_spend(site_root: Path) -> None:
    first = start_round(site_root, 1, 5)
    assert first.wait(timeout=120) == 0, first.stdout.read() if first.stdout else ""
    rounds, eps = spent(site_root)
    assert rounds == 1 and eps > 0

    for delay in (0.5, 3.0, 6.0, 9.0):  # start-up, import, validation, training
        proc = start_round(site_root, 2, 200_000)  # far too long to finish before the kill
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        after_rounds, after_eps = spent(site_root)
        assert after_rounds >= rounds and after_eps >= eps
        rounds, eps = after_rounds, after_eps

    last = start_round(site_root, 2, 5)
    assert last.wait(timeout=120) == 0
    final_rounds, final_eps = spent(site_root)
    assert final_rounds == rounds + 1 and final_eps > eps
    doc = json.loads((site_root / "state" / "privacy_ledger.json").read_text())
    assert [e["round"] for e in doc["entries"]][-1] == 2
