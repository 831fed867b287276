"""``fedsynth server sites add|remove|list``: the coordinator's registry of admitted sites."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deploy.certs import create_site_key, public_key_fingerprint
from fedsynth.cli import main
from server.deploy import RegistryFollower, ServerOptions, check_enough_sites, register_site
from server.errors import DeploymentError, SiteRegistryError
from server.sites import SiteRegistry


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("hospital-a", "hospital-b"):
        create_site_key(tmp_path / "keys", name)
    return tmp_path / "keys"


def sites_cli(state: Path, *args: str) -> int:
    return main(["server", "sites", *args, "--state-dir", str(state)])


def test_add_list_remove_round_trip(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"

    assert sites_cli(state, "add", "hospital-b", "--key", str(keys / "hospital-b.pub")) == 0
    assert sites_cli(state, "add", "hospital-a", "--key", str(keys / "hospital-a.pub")) == 0
    capsys.readouterr()
    assert sites_cli(state, "list") == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed[:2]] == ["hospital-a", "hospital-b"]
    # The fingerprint the site saw from `fedsynth certs site`, to compare out of band.
    assert listed[0].split("\t")[1] == public_key_fingerprint(keys / "hospital-a.pub")
    assert "2 site(s)" in listed[2]

    assert sites_cli(state, "remove", "hospital-a") == 0
    assert [s.name for s in SiteRegistry(state).sites()] == ["hospital-b"]
    assert not list(state.glob(".*.tmp")), "atomic write left a temporary file"


def test_registry_feeds_the_server_with_exactly_the_listed_keys(tmp_path: Path, keys: Path) -> None:
    state = tmp_path / "state"
    SiteRegistry(state).add("hospital-a", keys / "hospital-a.pub")
    opts = ServerOptions(certs=None, state_dir=state)

    admitted = opts.admitted()

    assert list(admitted) == ["hospital-a"]
    assert admitted["hospital-a"] == (keys / "hospital-a.pub").read_text().strip()
    with pytest.raises(DeploymentError, match="given twice"):
        ServerOptions(certs=None, state_dir=state, site_keys=[keys / "hospital-a.pub"]).admitted()


def test_too_few_admitted_sites_are_refused_or_warned_before_the_superlink_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys_only = ServerOptions(certs=None, site_keys=[tmp_path / "a.pub", tmp_path / "b.pub"])
    with pytest.raises(DeploymentError, match="--min-sites 3 but only 2 site key"):
        check_enough_sites(keys_only, 2, 3)
    check_enough_sites(keys_only, 2, 2)

    # A registry may still grow during the run (`sites add`): warn, do not refuse.
    with caplog.at_level(logging.WARNING, logger="fedsynth.server"):
        check_enough_sites(ServerOptions(certs=None, state_dir=tmp_path), 2, 3)
    assert "admits only 2 site(s): the run waits" in caplog.text


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 64, "../etc", "é"])
def test_bad_names_are_refused_with_the_rule(tmp_path: Path, keys: Path, name: str) -> None:
    with pytest.raises(SiteRegistryError, match="invalid: use 1-63 letters"):
        SiteRegistry(tmp_path).add(name, keys / "hospital-a.pub")
    assert not (tmp_path / "sites.json").exists()


def test_duplicate_name_and_duplicate_key_are_refused(tmp_path: Path, keys: Path) -> None:
    reg = SiteRegistry(tmp_path)
    reg.add("hospital-a", keys / "hospital-a.pub")

    with pytest.raises(SiteRegistryError, match="'hospital-a' is already registered"):
        reg.add("hospital-a", keys / "hospital-b.pub")
    with pytest.raises(SiteRegistryError, match="already registered as site 'hospital-a'"):
        reg.add("hospital-c", keys / "hospital-a.pub")
    assert [s.name for s in reg.sites()] == ["hospital-a"]


def test_bad_key_files_are_refused(tmp_path: Path, keys: Path) -> None:
    reg = SiteRegistry(tmp_path)
    (tmp_path / "junk.pub").write_text("ssh-ed25519 AAAA not-a-key\n")
    private = keys / "hospital-a.key"

    with pytest.raises(SiteRegistryError, match="not an OpenSSH public key"):
        reg.add("a", tmp_path / "junk.pub")
    with pytest.raises(SiteRegistryError, match="not an OpenSSH public key"):
        reg.add("a", private)
    with pytest.raises(SiteRegistryError, match="cannot read the key file"):
        reg.add("a", tmp_path / "missing.pub")


def test_remove_unknown_site_names_the_registered_ones(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SiteRegistry(tmp_path).add("hospital-a", keys / "hospital-a.pub")

    assert sites_cli(tmp_path, "remove", "hospital-z") == 2
    err = capsys.readouterr().err
    assert "no site named 'hospital-z'" in err and "registered: hospital-a" in err
    assert "Traceback" not in err


def test_edited_registry_is_refused_not_emptied(tmp_path: Path, keys: Path) -> None:
    reg = SiteRegistry(tmp_path)
    reg.add("hospital-a", keys / "hospital-a.pub")
    doc = json.loads(reg.path.read_text())
    doc["sites"][0]["name"] = "mallory"
    reg.path.write_text(json.dumps(doc))

    with pytest.raises(SiteRegistryError, match="checksum mismatch"):
        reg.sites()
    reg.path.write_text("{not json")
    with pytest.raises(SiteRegistryError, match="is damaged"):
        reg.add("hospital-b", keys / "hospital-b.pub")


def test_server_without_schema_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--insecure"]) == 2
    assert "needs --schema FILE and --out DIR" in capsys.readouterr().err


class RecordingRuntime:
    """Stands in for the Flower CLI runtime: records commands, answers like `flwr`."""

    def __init__(self, root: Path) -> None:
        self.root, self.next_id = root, 100
        self.commands: list[list[str]] = []

    def run(self, args: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        self.commands.append([Path(args[0]).name, *args[1:]])
        self.next_id += 1
        out = json.dumps({"success": True, "node-id": self.next_id})
        return subprocess.CompletedProcess(args, 0, out, "")


def test_a_running_server_follows_removals_additions_and_key_changes(
    tmp_path: Path, keys: Path
) -> None:
    # Prepare: hospital-a and hospital-b registered at start-up as nodes 7 and 8.
    state = tmp_path / "state"
    reg = SiteRegistry(state)
    reg.add("hospital-a", keys / "hospital-a.pub")
    reg.add("hospital-b", keys / "hospital-b.pub")
    create_site_key(tmp_path / "new", "hospital-b")
    opts = ServerOptions(certs=None, state_dir=state)
    rt = RecordingRuntime(tmp_path)
    nodes = {"hospital-a": 7, "hospital-b": 8}
    nodes_file = tmp_path / "site-nodes.json"
    follower = RegistryFollower(
        rt,  # type: ignore[arg-type]
        opts,
        opts.admitted(),
        nodes,
        interval=0.2,
        nodes_file=nodes_file,
    )

    # Execute: hospital-a leaves, hospital-b gets a new key, while the run goes on.
    reg.remove("hospital-a")
    reg.remove("hospital-b")
    reg.add("hospital-b", tmp_path / "new" / "hospital-b.pub")
    follower.start()
    wait = time.monotonic() + 10
    while len(rt.commands) < 3 and time.monotonic() < wait:
        time.sleep(0.1)
    follower.stop()

    # Assert
    verbs = [(c[2], c[3]) for c in rt.commands]
    assert verbs[:2] == [("unregister", "7"), ("unregister", "8")]
    assert verbs[2][0] == "register"
    assert rt.commands[2][rt.commands[2].index("--name") + 1] == "hospital-b"
    assert follower.nodes == {"hospital-b": 103}  # ids 101, 102 went to the unregister calls
    assert not follower.is_alive()
    # The ServerApp's map follows: replies from nodes 7 and 8 are no longer any site's.
    assert json.loads(nodes_file.read_text()) == {"103": "hospital-b"}


def test_a_site_readded_with_its_revoked_key_is_told_once_and_not_retried(
    tmp_path: Path, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: hospital-a registered as node 7, then removed from the registry.
    state = tmp_path / "state"
    reg = SiteRegistry(state)
    reg.add("hospital-a", keys / "hospital-a.pub")
    opts = ServerOptions(certs=None, state_dir=state)
    rt = RecordingRuntime(tmp_path)
    follower = RegistryFollower(rt, opts, opts.admitted(), {"hospital-a": 7})  # type: ignore[arg-type]
    reg.remove("hospital-a")
    follower.sync()

    # Execute: the operator re-adds it with the same key; the follower polls three times.
    reg.add("hospital-a", keys / "hospital-a.pub")
    with caplog.at_level(logging.ERROR, logger="fedsynth.server"):
        for _ in range(3):
            follower.sync()

    # Assert: no register attempt (the SuperLink would refuse the key), one clear message.
    assert [c[2] for c in rt.commands] == ["unregister"]
    told = [r.getMessage() for r in caplog.records if "revoked key" in r.getMessage()]
    assert len(told) == 1 and "fedsynth certs site --name hospital-a" in told[0]
    assert follower.nodes == {}


def test_a_refused_registration_names_the_superlinks_reason(tmp_path: Path) -> None:
    class Refusing(RecordingRuntime):
        def run(self, args: list[str], **_: object) -> subprocess.CompletedProcess[str]:
            out = json.dumps({"success": False, "error-message": "Public key already in use"})
            return subprocess.CompletedProcess(args, 1, out, "")

    with pytest.raises(DeploymentError, match="did not register site h-1: Public key already"):
        register_site(Refusing(tmp_path), "h-1", "ecdsa-sha2-nistp384 AAAA")  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_fingerprint_is_the_one_ssh_keygen_prints(keys: Path) -> None:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(keys / "hospital-a.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert public_key_fingerprint(keys / "hospital-a.pub") == out[1]
    assert out[1].startswith("SHA256:") and len(out[1]) == 7 + 43


def test_a_registry_with_old_style_fingerprints_still_loads_and_is_upgraded(
    tmp_path: Path, keys: Path
) -> None:
    # Prepare: a registry written before fingerprints took OpenSSH's format.
    from server.sites import REGISTRY_FILE, _checksum, legacy_fingerprint

    state = tmp_path / "state"
    reg = SiteRegistry(state)
    reg.add("hospital-a", keys / "hospital-a.pub")
    doc = json.loads((state / REGISTRY_FILE).read_text(encoding="utf-8"))
    for entry in doc["sites"]:
        entry["fingerprint"] = legacy_fingerprint(entry["public_key"])
    doc["checksum"] = _checksum(doc["sites"])
    (state / REGISTRY_FILE).write_text(json.dumps(doc), encoding="utf-8")

    # Execute
    (site,) = reg.sites()
    reg.add("hospital-b", keys / "hospital-b.pub")

    # Assert: read in today's format, and stored so at the next write.
    today = public_key_fingerprint(keys / "hospital-a.pub")
    assert site.fingerprint == today
    stored = json.loads((state / REGISTRY_FILE).read_text(encoding="utf-8"))["sites"]
    assert stored[0]["fingerprint"] == today


def test_a_line_without_a_key_blob_has_no_fingerprint() -> None:
    from shared.errors import ConfigError
    from shared.ssh_keys import openssh_fingerprint

    with pytest.raises(ConfigError, match="not an OpenSSH public key line"):
        openssh_fingerprint("ecdsa-sha2-nistp384 not*base64")


def test_a_site_prints_the_fingerprint_the_coordinator_registered(
    tmp_path: Path, keys: Path
) -> None:
    # Prepare: the registry holds hospital-a's .pub; the site has the matching .key.
    from client.deploy import identity_line
    from client.errors import SiteConfigError
    from client.settings import SiteSettings

    reg = SiteRegistry(tmp_path / "state")
    registered = reg.add("hospital-a", keys / "hospital-a.pub")
    site = SiteSettings(
        site_name="hospital-a",
        data_path=tmp_path / "d.csv",
        schema_path=tmp_path / "s.json",
        state_dir=tmp_path / "site",
        budget_epsilon=3.0,
    )

    # Execute
    line = identity_line(site, keys / "hospital-a.key")

    # Assert: the same SHA256:... string `fedsynth server sites list` shows.
    assert f"joins with key {registered.fingerprint}:" in line
    assert "registered this key under the name 'hospital-a'" in line
    (tmp_path / "bad.key").write_text("not a key", encoding="utf-8")
    with pytest.raises(SiteConfigError, match=r"cannot read the site key .*bad.key: not an"):
        identity_line(site, tmp_path / "bad.key")
