"""Flower runtime plumbing shared by the site and coordinator commands.

:class:`FlowerRuntime` owns a private ``FLWR_HOME`` and ``RAY_TMPDIR``
(deleted when closed, so runs leave nothing behind), disables Flower's runtime
dependency installer (it would download CUDA wheels), and starts and stops the
Flower processes it launches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import FedsynthError


class FlowerRuntimeError(FedsynthError):
    """A Flower process or command could not be started or failed."""


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
        raise FlowerRuntimeError(
            f"{name!r} was not found; install fedsynth with its dependencies (pip install -e .)"
        )
    return found


@dataclass
class FlowerRuntime:
    """A private ``FLWR_HOME`` and ``RAY_TMPDIR`` under ``root``; removed by :meth:`close`."""

    root: Path
    keep: bool = False
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
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

    def spawn(
        self,
        args: Sequence[str],
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running Flower process in its own session, logging to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(fh)
        proc = subprocess.Popen(
            list(args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=self.env(extra_env),
            cwd=cwd,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def run(
        self, args: Sequence[str], *, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a short Flower CLI command and return its output."""
        try:
            res = subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FlowerRuntimeError(
                f"`{' '.join(args[:3])} …` did not finish in {timeout:.0f}s"
            ) from None
        if check and res.returncode != 0:
            raise FlowerRuntimeError(
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


def detached_helpers(pid: int) -> list[int]:
    """PIDs of helpers Flower detached from ``pid`` (started with ``--parent-pid PID``).

    Flower starts ``flower-superexec`` in a new session, so killing the parent's
    process group does not reach it; it is found through its command line.
    """
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(args[:-1]):
            if arg == b"--parent-pid" and args[i + 1] == str(pid).encode():
                found.append(int(proc_dir.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` has exited or ``timeout`` seconds passed; whether it is gone."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM a process group, then Flower's detached helpers that outlive it; SIGKILL leftovers.

    A Flower helper stops by itself when its parent stops (it watches the parent's
    PID, and the SuperLink also terminates its SuperExec). It is signalled only if it
    is still running after ``grace`` seconds: Flower's signal handler resets itself on
    the first signal, and a second one arriving while it runs is printed as "Signal 15
    ignored due to race condition".
    """
    helpers = detached_helpers(proc.pid)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    for pid in helpers:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if _wait_gone(pid, grace):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # JSON string escaping is valid TOML basic-string escaping


def write_toml_table(values: Mapping[str, Any]) -> str:
    """``key = value`` lines for a flat mapping."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
