"""``fedsynth simulate --ray-address``: the sites run on an existing Ray cluster.

Starts a private Ray head on 127.0.0.1 (its own temp dir and port), points a tiny
simulation at it, checks that the sites' training ran in that cluster's workers,
then stops exactly the processes this test started (``ray stop`` would stop every
Ray cluster of this user on the machine, including other people's runs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.runtime import free_port
from tests.e2e import run_cli, wait_for

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def ray_head() -> Iterator[tuple[str, Path]]:
    # A short temp path: Ray's socket paths are length-limited.
    temp = Path(tempfile.mkdtemp(prefix="fsray-"))
    port = free_port()
    log = open(temp / "head.log", "wb")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--temp-dir",
            str(temp),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    try:
        wait_for(
            lambda: (temp / "session_latest").exists() or head.poll() is not None,
            60,
            "the Ray head to start",
        )
        assert head.poll() is None, (temp / "head.log").read_text()[-2000:]
        time.sleep(2)
        yield f"127.0.0.1:{port}", temp
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()
        # Ray daemons outside the head's process group are found by their temp dir.
        wait_for(lambda: not _pids_mentioning(str(temp)), 30, "the Ray cluster to stop")
        shutil.rmtree(temp, ignore_errors=True)


def test_simulation_runs_on_an_existing_ray_cluster(
    ray_head: tuple[str, Path], tmp_path: Path
) -> None:
    address, temp = ray_head
    out = tmp_path / "out"

    res = run_cli(
        [
            "simulate",
            "--sites",
            "2",
            "--rounds",
            "1",
            "--local-steps",
            "3",
            "--synthetic-rows",
            "200",
            "--no-evaluate",
            "--out",
            str(out),
            "--ray-address",
            address,
        ],
        timeout=300,
    )

    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "synthetic.csv").exists()
    # The sites' training logged inside the cluster's own worker logs.
    worker_logs = list((temp / "session_latest" / "logs").glob("worker-*"))
    assert any("fedsynth.client" in p.read_text(errors="replace") for p in worker_logs)
