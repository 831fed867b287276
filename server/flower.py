"""Drive Flower's SuperLink: app bundle, connections, ``flwr run`` and its status.

Both ``fedsynth simulate`` and ``fedsynth server`` use this module, so a
simulation exercises the same ServerApp/ClientApp and the same submission path
as a deployment; only the SuperLink mode (``--simulation``) differs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.errors import DeploymentError
from server.progress import RoundProgress
from shared.runtime import FlowerRuntime, flower_bin, write_toml_table

log = logging.getLogger("fedsynth.server")
APP_PACKAGES = ("shared", "client", "server")


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wait_healthy(
    proc: subprocess.Popen[bytes],
    port: int,
    log_path: Path,
    *,
    ca_cert: Path | None = None,
    timeout: float = 60.0,
    host: str = "127.0.0.1",
) -> None:
    """Wait until the SuperLink answers its health endpoint (over TLS when ``ca_cert`` is given).

    ``host`` is the address it listens on (loopback when it listens on all of them).
    """
    deadline = time.monotonic() + timeout
    scheme = "https" if ca_cert else "http"
    url = f"{scheme}://{host_port(host, port)}/health"
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            raise DeploymentError(f"the SuperLink exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DeploymentError(
        f"the SuperLink did not become healthy at {host}:{port} within {timeout:.0f}s; "
        f"see {log_path}"
    )


def build_app(dest: Path, config: Mapping[str, Any]) -> Path:
    """Materialise the Flower app (pyproject + the three packages) in ``dest``.

    The packages are copied from wherever they are imported from, so this works
    from a clone and from an installed wheel alike.
    """
    import importlib

    dest.mkdir(parents=True, exist_ok=True)
    for name in APP_PACKAGES:
        src = Path(importlib.import_module(name).__file__ or "").parent
        shutil.copytree(
            src,
            dest / name,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*_test.py"),
        )
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


def add_connection(
    runtime: FlowerRuntime, name: str, address: str, *, root_certificates: Path | None = None
) -> None:
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


def submit_and_wait(
    runtime: FlowerRuntime,
    app_dir: Path,
    connection: str,
    overrides: Mapping[str, Any],
    log_path: Path,
    *,
    echo: bool = True,
    federation_config: Mapping[str, Any] | None = None,
) -> int:
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
    cmd = [flower_bin("flwr"), "run", str(app_dir), connection, "--format", "json"]
    cmd += ["--run-config", str(overrides_file)]
    if federation_config:
        cmd += ["--federation-config", " ".join(f"{k}={v}" for k, v in federation_config.items())]
    res = runtime.run(cmd, timeout=300)
    try:
        run_id = int(json.loads(res.stdout)["run-id"])
    except (ValueError, KeyError) as exc:
        raise DeploymentError(f"`flwr run` gave no run id ({exc}): {res.stdout[-800:]}") from None
    log.info("submitted Flower run %d; streaming its log to %s", run_id, log_path)
    try:
        _stream_log(runtime, run_id, connection, log_path, echo)
    except BaseException:
        # Stopping the SuperLink under an active run would orphan the simulation
        # and its Ray workers: stop the run first.
        runtime.run([flower_bin("flwr"), "stop", str(run_id), connection], check=False)
        raise
    status = run_status(runtime, run_id, connection)
    if not status.startswith("finished:completed"):
        tail = log_path.read_text(errors="replace")[-3000:]
        raise DeploymentError(
            f"Flower run {run_id} ended with status {status!r}. End of its log:\n{tail}"
        )
    return run_id


def _stream_log(
    runtime: FlowerRuntime, run_id: int, connection: str, log_path: Path, echo: bool
) -> None:
    """Copy the run's log to ``log_path`` (and stdout) until the run ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "w", encoding="utf-8") as fh,
        subprocess.Popen(
            [flower_bin("flwr"), "log", str(run_id), connection, "--stream"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=runtime.env(),
        ) as proc,
    ):
        # A progress bar only on a terminal; piped output stays the plain log.
        bar = RoundProgress(sys.stdout) if echo and sys.stdout.isatty() else None
        try:
            with bar or contextlib.nullcontext():
                for line in proc.stdout or ():
                    fh.write(line)
                    if bar is not None:
                        bar.echo(line)
                        bar.feed(line)
                    elif echo:
                        sys.stdout.write(line)
        finally:
            # Stopped early (SIGTERM, Ctrl-C): without this, leaving the `with` would wait
            # for `flwr log`'s next line, or (Ctrl-C) leave it running and warn about it.
            if proc.poll() is None:
                proc.terminate()


def run_status(runtime: FlowerRuntime, run_id: int, connection: str) -> str:
    """``status:sub-status`` of a run, e.g. ``finished:completed`` or ``finished:failed``."""
    res = runtime.run(
        [flower_bin("flwr"), "list", connection, "--run-id", str(run_id), "--format", "json"],
        timeout=60,
    )
    try:
        run = json.loads(res.stdout)["runs"][0]
        return str(run["status"])
    except (ValueError, KeyError, IndexError) as exc:
        raise DeploymentError(f"cannot read the status of run {run_id} ({exc})") from None
