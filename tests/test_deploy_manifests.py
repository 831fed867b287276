"""Structure checks of the deployment manifests under ``deploy/`` (no Docker engine needed).

Parses the compose file and the Kubernetes manifests (YAML), the systemd unit
(configparser) and the Dockerfiles (line parsing), and checks what a mistake
would cost: a site that can read another site's key, a coordinator without TLS
or authentication, a secret committed in plain text, an image name that no
Dockerfile builds, a port that does not match.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
DOCKER_DIR = DEPLOY / "docker"
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]
MANIFESTS = [
    COMPOSE_DIR / "docker-compose.yml",
    DEPLOY / "k8s" / "coordinator.yaml",
    DEPLOY / "systemd" / "fedsynth-client.service",
    DEPLOY / "systemd" / "client.env.example",
    *(DOCKER_DIR / f"Dockerfile.{name}" for name in ("server", "client", "client-cuda")),
]
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(
        r"(?i)\b(password|passwd|pwd|token|api[_-]?key|secret|client[_-]?secret)[ \t]*[=:][ \t]*['\"]?[^\s'\"$]{3,}"
    ),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
]


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    text = (DEPLOY / "k8s" / "coordinator.yaml").read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d]


def _k8s_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def _image_title(dockerfile: Path) -> str:
    for instr, args in _dockerfile(dockerfile):
        if instr == "LABEL":
            match = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', args)
            if match:
                return match.group(1)
    raise AssertionError(f"{dockerfile} has no org.opencontainers.image.title label")


def _version() -> str:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return str(doc["project"]["version"])


# ------------------------------------------------------------------ compose
def test_compose_has_the_demo_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"certs", "server", *HOSPITALS}
    for name, svc in services.items():
        assert svc.get("image"), f"{name} has no image"
        assert svc.get("command"), f"{name} has no command"
    assert services["server"]["ports"] == ["9092:9092"]
    assert services["server"]["depends_on"]["certs"]["condition"] == (
        "service_completed_successfully"
    )
    for name in HOSPITALS:
        assert services[name]["depends_on"]["server"]["condition"] == "service_healthy"
        assert services[name]["restart"] == "on-failure"


def test_compose_builds_reference_existing_dockerfiles(compose: dict[str, Any]) -> None:
    built: dict[str, Path] = {}
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        dockerfile = context / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert "download.pytorch.org/whl/cpu" in svc["build"]["args"]["TORCH_INDEX"]
        built[svc["image"]] = dockerfile
    for name, svc in compose["services"].items():
        assert svc["image"] in built, f"{name} uses {svc['image']}, which nothing here builds"


def test_image_names_match_dockerfiles_and_version(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    for svc in compose["services"].values():
        if "build" in svc:
            repo, _, tag = svc["image"].partition(":")
            assert _image_title(ROOT / svc["build"]["dockerfile"]) == repo
            assert tag == _version()
    container = _k8s_kind(k8s, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    repo, _, tag = container["image"].partition(":")
    assert repo == _image_title(DOCKER_DIR / "Dockerfile.server") and tag == _version()
    assert _image_title(DOCKER_DIR / "Dockerfile.client-cuda") == "fedsynth-client-cuda"


def test_compose_server_uses_tls_and_registers_every_hospital(compose: dict[str, Any]) -> None:
    cmd = [str(a) for a in compose["services"]["server"]["command"]]
    assert cmd[0] == "server"
    assert _flag_values(cmd, "--certs") == ["/certs"]
    keys = _flag_values(cmd, "--site-key")
    # A --site-key registers the key under its file's name, which each hospital must run
    # with as --site-name (else it refuses every message: client/identity.py).
    assert keys == [f"/certs/sites/{name}.pub" for name in HOSPITALS]
    assert _flag_values(cmd, "--host") == ["0.0.0.0"]
    assert _flag_values(cmd, "--port") == ["9092"]
    assert _flag_values(cmd, "--min-sites") == [str(len(HOSPITALS))]
    assert _flag_values(cmd, "--out") == ["/out"]
    assert _flag_values(cmd, "--schema") == ["/schema/schema.json"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_no_insecure_mode_in_any_manifest(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "--insecure" not in text, f"{path} runs without TLS/authentication"


def test_certs_service_issues_what_the_others_mount(compose: dict[str, Any]) -> None:
    svc = compose["services"]["certs"]
    script = "\n".join(svc["command"])
    assert "fedsynth certs server --out /certs/coordinator" in script
    assert "--host server" in script  # the name the hospitals dial
    assert "--host 127.0.0.1" in script  # fedsynth server talks to its own SuperLink
    assert "mv /certs/coordinator/ca.key /certs/offline/" in script
    assert re.search(r"for name in hospital-a hospital-b hospital-c; do", script)
    assert "fedsynth certs site --name $$name --out /certs/site-$$i" in script
    assert svc["network_mode"] == "none"


def _mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = svc.get("volumes", [])
    assert all(isinstance(m, dict) for m in mounts), "use the long volume syntax"
    return list(mounts)


def test_each_hospital_mounts_only_its_own_key_data_and_ledger(compose: dict[str, Any]) -> None:
    ledgers = set()
    for i, name in enumerate(HOSPITALS):
        svc = compose["services"][name]
        cmd = [str(a) for a in svc["command"]]
        assert _flag_values(cmd, "--key") == [f"/keys/{name}.key"]
        assert _flag_values(cmd, "--ca") == ["/keys/ca.crt"]
        assert _flag_values(cmd, "--superlink") == ["server:9092"]
        assert _flag_values(cmd, "--site-name") == [name]
        state = _flag_values(cmd, "--state-dir")
        mounts = _mounts(svc)
        certs = [m for m in mounts if m.get("source") == "certs"]
        assert len(certs) == 1 and certs[0]["target"] == "/keys" and certs[0]["read_only"]
        assert certs[0]["volume"]["subpath"] == f"site-{i}", f"{name} must see only site-{i}"
        data = [m for m in mounts if m["target"] == "/data/site.csv"]
        assert len(data) == 1 and data[0]["source"] == f"./data/site-{i}.csv"
        assert data[0]["read_only"]
        ledger = [m for m in mounts if m["target"] == state[0]]
        assert len(ledger) == 1 and ledger[0]["type"] == "volume"
        ledgers.add(ledger[0]["source"])
    assert len(ledgers) == len(HOSPITALS), "each hospital needs its own ledger volume"


def test_server_sees_no_site_private_key_and_no_ca_key(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for m in _mounts(svc):
            if m.get("source") != "certs":
                continue
            subpath = m.get("volume", {}).get("subpath")
            if name == "certs":
                assert subpath is None
            elif name == "server":
                assert subpath == "coordinator" and m["read_only"]
            assert subpath != "offline", f"{name} mounts the CA key"


def test_every_mounted_path_exists_or_is_generated(compose: dict[str, Any], tmp_path: Path) -> None:
    # The demo data is generated, not committed: run the generator and check it
    # writes every file the compose file binds.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_demo_data", COMPOSE_DIR / "make_demo_data.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--rows", "20", "--out", str(tmp_path)]) == 0
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for m in _mounts(svc):
            if m["type"] == "volume":
                assert m["source"] in declared, f"{name}: volume {m['source']} not declared"
                continue
            assert m["type"] == "bind"
            assert m["bind"]["create_host_path"] is False, f"{name}: {m['source']}"
            rel = Path(m["source"])
            if rel.parts[:2] == (".", "data") or rel.parts[0] == "data":
                assert (tmp_path / rel.name).is_file(), f"{rel} is not made by make_demo_data.py"
            else:
                assert (COMPOSE_DIR / rel).exists(), f"{name}: {rel} does not exist"
    ignored = (COMPOSE_DIR / ".gitignore").read_text(encoding="utf-8").split()
    assert "data/" in ignored


# ------------------------------------------------------------------ secrets
def _deploy_text_files() -> list[Path]:
    return [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


def test_secret_patterns_catch_a_planted_secret() -> None:
    planted = "-----BEGIN OPENSSH PRIVATE KEY-----\npassword=hunter22\ntoken: abcdef123\n"
    assert sum(bool(p.search(planted)) for p in SECRET_PATTERNS) == 2
    assert not any(p.search("secretName: fedsynth-coordinator-tls") for p in SECRET_PATTERNS)
    assert not any(p.search("secret:\n  secretName: x") for p in SECRET_PATTERNS)


@pytest.mark.parametrize("path", _deploy_text_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_plaintext_secrets_in_deploy(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    for pattern in SECRET_PATTERNS:
        match = pattern.search(text)
        assert match is None, f"{path}: looks like a secret: {match.group(0)[:40]!r}"


# ------------------------------------------------------------------ Dockerfiles
@pytest.mark.parametrize("name", ["server", "client", "client-cuda"])
def test_dockerfile_structure(name: str) -> None:
    path = DOCKER_DIR / f"Dockerfile.{name}"
    lines = _dockerfile(path)
    instrs = [i for i, _ in lines]
    assert lines[0] == ("FROM", "python:3.11-slim")
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in lines if i == "ARG"}
    assert args["TORCH_VERSION"] == "2.13.0"
    want_index = "/whl/cu" if name.endswith("cuda") else "download.pytorch.org/whl/cpu"
    assert want_index in args["TORCH_INDEX"]
    runs = [a for i, a in lines if i == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if '--index-url "${TORCH_INDEX}"' in r)
    project_at = next(n for n, r in enumerate(runs) if "pip install ." in r)
    assert torch_at < project_at and "torch==${TORCH_VERSION}" in runs[torch_at]
    env = " ".join(a for i, a in lines if i == "ENV")
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env
    assert "FLWR_TELEMETRY_ENABLED=0" in env
    assert "FLWR_HOME=/var/lib/fedsynth/flwr" in env
    user = [a for i, a in lines if i == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    assert instrs.index("USER") > max(n for n, i in enumerate(instrs) if i == "RUN")
    assert json.loads(dict(lines)["ENTRYPOINT"]) == ["fedsynth"]
    for src in (a.split()[0] for i, a in lines if i == "COPY"):
        assert (ROOT / src).exists(), f"{path}: COPY source {src} does not exist"
    if name == "server":
        assert dict(lines)["EXPOSE"] == "9092"
    ignore = DOCKER_DIR / f"Dockerfile.{name}.dockerignore"
    assert ignore.is_file()
    assert ignore.read_text(encoding="utf-8") == (
        DOCKER_DIR / "Dockerfile.server.dockerignore"
    ).read_text(encoding="utf-8")


def test_dockerignore_keeps_private_files_out() -> None:
    rules = (DOCKER_DIR / "Dockerfile.server.dockerignore").read_text(encoding="utf-8").split()
    assert rules[rules.index("**") :][0] == "**"  # deny by default, then allow the code
    for rule in ("**/*.key", "**/*.csv", "**/privacy_ledger.json*", "deploy/compose/data"):
        assert rule in rules


# ------------------------------------------------------------------ systemd
def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DEPLOY / "systemd" / "fedsynth-client.service", encoding="utf-8")
    return parser


def _env_example() -> dict[str, str]:
    text = (DEPLOY / "systemd" / "client.env.example").read_text(encoding="utf-8")
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_systemd_unit_runs_the_site_hardened() -> None:
    svc = _unit()["Service"]
    assert svc["User"] == "fedsynth"
    assert svc["EnvironmentFile"] == "/etc/fedsynth/client.env"
    assert svc["Restart"] == "always"  # waits for the next run after one ends
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert svc[key] == value, key
    env = _env_example()
    assert svc["ReadWritePaths"] == env["FEDSYNTH_STATE_DIR"]
    start = shlex.split(svc["ExecStart"])
    assert start[1] == "client"
    for flag in ("--data", "--schema", "--budget-epsilon", "--superlink", "--ca", "--key"):
        assert _flag_values(start, flag), f"ExecStart lacks {flag}"
    assert _flag_values(start, "--state-dir") == ["${FEDSYNTH_STATE_DIR}"]
    assert "WantedBy" in _unit()["Install"]


def test_systemd_variables_are_all_defined_in_the_example() -> None:
    svc = _unit()["Service"]
    # ${VAR} stays one word; $VAR (the extra options) is split on spaces by systemd.
    used = set(re.findall(r"\$\{?(\w+)\}?", svc["ExecStart"] + svc["ExecStartPre"]))
    assert used <= set(_env_example()), f"undefined: {used - set(_env_example())}"
    assert "FEDSYNTH_EXTRA_ARGS" in used
    assert all(" " not in v for k, v in _env_example().items() if k != "FEDSYNTH_EXTRA_ARGS")


# ------------------------------------------------------------------ Kubernetes
def test_k8s_objects_and_no_inline_secrets(k8s: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in k8s)
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim", "Service"]
    assert all(d["metadata"].get("namespace", "fedsynth") == "fedsynth" for d in k8s)


def test_k8s_service_port_matches_container_and_args(k8s: list[dict[str, Any]]) -> None:
    pod = _k8s_kind(k8s, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    svc = _k8s_kind(k8s, "Service")
    (svc_port,) = svc["spec"]["ports"]
    target = svc_port["targetPort"]
    assert svc_port["port"] == ports.get(target, target) == 9092
    assert _flag_values(container["args"], "--port") == [str(svc_port["port"])]
    labels = _k8s_kind(k8s, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


def test_k8s_mounts_match_the_server_args(k8s: list[dict[str, Any]]) -> None:
    header = (DEPLOY / "k8s" / "coordinator.yaml").read_text(encoding="utf-8")
    pod = _k8s_kind(k8s, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = [str(a) for a in container["args"]]
    assert args[0] == "server" and _flag_values(args, "--host") == ["0.0.0.0"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert _flag_values(args, "--certs") == [mounts["tls"]]
    tls = volumes["tls"]["secret"]
    assert {i["key"] for i in tls["items"]} == {"ca.crt", "server.pem", "server.key"}
    assert f"create secret generic {tls['secretName']}" in header  # documented, not inlined
    keys = _flag_values(args, "--site-key")
    assert keys and all(k.startswith(mounts["site-keys"] + "/") for k in keys)
    site_cm = volumes["site-keys"]["configMap"]["name"]
    assert f"create configmap {site_cm}" in header
    assert _flag_values(args, "--schema")[0].startswith(mounts["schema"] + "/")
    assert _flag_values(args, "--out") == [mounts["release"]]
    pvc = _k8s_kind(k8s, "PersistentVolumeClaim")["metadata"]["name"]
    assert volumes["release"]["persistentVolumeClaim"]["claimName"] == pvc
    schema_cm = _k8s_kind(k8s, "ConfigMap")
    assert volumes["schema"]["configMap"]["name"] == schema_cm["metadata"]["name"]
    example = json.loads((ROOT / "shared" / "data" / "cohort_schema.json").read_text("utf-8"))
    assert json.loads(schema_cm["data"]["schema.json"]) == example


def test_k8s_pod_is_non_root_with_resources(k8s: list[dict[str, Any]]) -> None:
    pod = _k8s_kind(k8s, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert container["readinessProbe"]["tcpSocket"]["port"] == "fleet"


# ------------------------------------------------------------------ guides
@pytest.mark.parametrize(
    ("name", "must_say"),
    [
        ("README.md", ["docker-compose.yml", "coordinator.yaml", "fedsynth-client.service"]),
        ("GUIDE-hospital-it.md", ["fedsynth certs site", "fedsynth doctor", "back up", "ledger"]),
        ("GUIDE-coordinator.md", ["fedsynth certs server", "fedsynth server", "--site-key"]),
        ("GUIDE-researcher.md", ["fedsynth simulate", "docker compose"]),
    ],
)
def test_guides_exist_with_commands(name: str, must_say: list[str]) -> None:
    text = (DEPLOY / name).read_text(encoding="utf-8").lower()
    for phrase in must_say:
        assert phrase.lower() in text, f"{name} does not mention {phrase!r}"
