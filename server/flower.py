"""Drive Flower's own runtime: SuperLink process, app bundle, ``flwr run``.

Both ``fedsynth simulate`` and ``fedsynth server`` use this module, so a
simulation exercises the same ServerApp/ClientApp and the same submission path
as a deployment; only the SuperLink mode (``--simulation``) differs.

Everything Flower and Ray write goes under a runtime folder fedsynth owns
(``FLWR_HOME`` and ``RAY_TMPDIR``), deleted when the run ends, and Flower's
runtime dependency installer is disabled (it would download CUDA wheels).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import DeploymentError

log = logging.getLogger("fedsynth.server")
APP_PACKAGES = ("shared", "client", "server")
FLWR_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_bin(name: str) -> str:
    """Path of a Flower console script installed beside this Python."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise DeploymentError(f"{name!r} was not found; install fedsynth with its dependencies (pip install -e .)")
    return found


@dataclass
class FlowerRuntime:
    """A private ``FLWR_HOME`` and ``RAY_TMPDIR`` under ``root``; removed by :meth:`close`."""

    root: Path
    keep: bool = False
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls, keep: bool = False) -> FlowerRuntime:
        """Make a fresh runtime folder (short path: Ray's socket paths are length-limited)."""
        root = Path(tempfile.mkdtemp(prefix="fedsynth-"))
        (root / "flwr").mkdir()
        (root / "ray").mkdir()
        return cls(root, keep)

    @property
    def home(self) -> Path:
        """``FLWR_HOME``."""
        return self.root / "flwr"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Process environment for Flower commands."""
        env = dict(os.environ)
        env.update(FLWR_ENV)
        env["FLWR_HOME"] = str(self.home)
        env["RAY_TMPDIR"] = str(self.root / "ray")
        # The SuperLink and SuperNode start helper executables (flower-superexec) by name.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(extra or {})
        return env

    def spawn(self, args: Sequence[str], log_path: Path, extra_env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running Flower process in its own session, logging to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(fh)
        proc = subprocess.Popen(list(args), stdout=fh, stderr=subprocess.STDOUT, env=self.env(extra_env),
                                cwd=cwd, start_new_session=True)
        self.processes.append(proc)
        return proc

    def run(self, args: Sequence[str], *, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short Flower CLI command and return its output."""
        try:
            res = subprocess.run(list(args), capture_output=True, text=True, env=self.env(),
                                 timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeploymentError(f"`{' '.join(args[:3])} …` did not finish in {timeout:.0f}s") from None
        if check and res.returncode != 0:
            raise DeploymentError(
                f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(args[:4]))} …` "
                f"failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-800:]}"
            )
        return res

    def close(self) -> None:
        """Stop every process this runtime started and delete its folder."""
        for proc in reversed(self.processes):
            stop_process(proc)
        self.processes.clear()
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FlowerRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 60.0) -> None:
    """Wait until the SuperLink answers its health endpoint."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            raise DeploymentError(f"the SuperLink exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DeploymentError(f"the SuperLink did not become healthy on port {port} within {timeout:.0f}s; see {log_path}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # JSON string escaping is valid TOML basic-string escaping


def write_toml_table(values: Mapping[str, Any]) -> str:
    """``key = value`` lines for a flat mapping."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def build_app(dest: Path, config: Mapping[str, Any]) -> Path:
    """Materialise the Flower app (pyproject + the three packages) in ``dest``.

    The packages are copied from wherever they are imported from, so this works
    from a clone and from an installed wheel alike.
    """
    import importlib

    dest.mkdir(parents=True, exist_ok=True)
    for name in APP_PACKAGES:
        src = Path(importlib.import_module(name).__file__ or "").parent
        shutil.copytree(src, dest / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*_test.py"))
    (dest / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "fedsynth-app"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "fedsynth"\n'
        'fab-include = ["shared/**/*.py", "shared/data/*.json", "client/**/*.py", "server/**/*.py"]\n\n'
        '[tool.flwr.app.components]\nserverapp = "server.app:app"\nclientapp = "client.app:app"\n\n'
        "[tool.flwr.app.config]\n" + write_toml_table(config),
        encoding="utf-8",
    )
    return dest


def add_connection(runtime: FlowerRuntime, name: str, address: str, *,
                   root_certificates: Path | None = None) -> None:
    """Register a SuperLink connection in ``$FLWR_HOME/config.toml``.

    Without ``root_certificates`` the connection is plaintext (``insecure``),
    which fedsynth uses only for a SuperLink it started on 127.0.0.1 itself.
    """
    cfg = runtime.home / "config.toml"
    if not cfg.exists():
        cfg.write_text(f'[superlink]\ndefault = "{name}"\n', encoding="utf-8")
    entry: dict[str, Any] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(root_certificates)
    with open(cfg, "a", encoding="utf-8") as fh:
        fh.write(f"\n[superlink.{name}]\n" + write_toml_table(entry))


def submit_and_wait(runtime: FlowerRuntime, app_dir: Path, connection: str,
                    overrides: Mapping[str, Any], log_path: Path, *, echo: bool = True) -> int:
    """Submit the app with ``flwr run``, stream its logs until it ends, check it completed.

    Returns
    -------
    int
        The Flower run id.

    Raises
    ------
    DeploymentError
        If the run did not finish with status ``completed``; the message holds
        the end of the run's log.
    """
    overrides_file = runtime.root / f"run-config-{time.time_ns()}.toml"
    overrides_file.write_text(write_toml_table(overrides), encoding="utf-8")
    res = runtime.run([flower_bin("flwr"), "run", str(app_dir), connection, "--format", "json",
                       "--run-config", str(overrides_file)], timeout=300)
    try:
        run_id = int(json.loads(res.stdout)["run-id"])
    except (ValueError, KeyError) as exc:
        raise DeploymentError(f"`flwr run` gave no run id ({exc}): {res.stdout[-500:]}") from None
    log.info("submitted Flower run %d; streaming its log to %s", run_id, log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen([flower_bin("flwr"), "log", str(run_id), connection, "--stream"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=runtime.env())
        if proc.stdout is not None:
            for line in proc.stdout:
                fh.write(line)
                if echo:
                    sys.stdout.write(line)
        proc.wait()
    status = run_status(runtime, run_id, connection)
    if not status.startswith("finished:completed"):
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DeploymentError(f"Flower run {run_id} ended with status {status!r}. End of its log:\n{tail}")
    return run_id


def run_status(runtime: FlowerRuntime, run_id: int, connection: str) -> str:
    """``status:sub-status`` of a run, e.g. ``finished:completed`` or ``finished:failed``."""
    res = runtime.run([flower_bin("flwr"), "list", connection, "--run-id", str(run_id),
                       "--format", "json"], timeout=60)
    try:
        run = json.loads(res.stdout)["runs"][0]
        return str(run["status"])
    except (ValueError, KeyError, IndexError) as exc:
        raise DeploymentError(f"cannot read the status of run {run_id} ({exc})") from None
