"""The ``fedsynth`` command: clear one-message errors, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.cli import main
from shared.cohort import cohort_schema, generate_cohort


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    schema = cohort_schema()
    schema.save(tmp_path / "schema.json")
    generate_cohort(200, seed=4)[schema.names].to_csv(tmp_path / "site.csv", index=False)
    return tmp_path / "site.csv", tmp_path / "schema.json"


def test_schema_check_passes_a_valid_table(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table, schema = files
    assert main(["schema", "check", str(table), "--schema", str(schema)]) == 0
    assert "200 rows match schema" in capsys.readouterr().out


def test_bad_table_gives_one_message_naming_file_column_and_fix(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table, schema = files
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[4, "age"] = "130"
    frame.to_csv(table, index=False)

    code = main(["schema", "check", str(table), "--schema", str(schema)])

    err = capsys.readouterr().err
    assert code == 2
    assert str(table) in err and "column 'age'" in err and "line 6" in err
    assert "widen the bound" in err
    assert "Traceback" not in err


def test_client_preflight_refuses_bad_data_before_connecting(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, schema = files
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[0, "smoker"] = "vaping"
    frame.to_csv(table, index=False)

    code = main(
        [
            "client",
            "--data",
            str(table),
            "--schema",
            str(schema),
            "--budget-epsilon",
            "3",
            "--state-dir",
            str(tmp_path / "state"),
            "--check",
        ]
    )

    err = capsys.readouterr().err
    assert code == 2 and "column 'smoker'" in err and "'vaping'" in err
    assert not (tmp_path / "state" / "privacy_ledger.json").exists()


def _check(table: Path, schema: Path, state: Path, *extra: str) -> int:
    args = ["client", "--data", str(table), "--schema", str(schema), "--budget-epsilon", "3"]
    return main([*args, "--state-dir", str(state), "--check", *extra])


def test_client_check_without_a_ledger_says_so_and_creates_nothing(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, schema = files
    state = tmp_path / "mistyped" / "state"

    assert _check(table, schema, state) == 0

    out = capsys.readouterr().out
    assert f"NO privacy ledger at {state / 'privacy_ledger.json'}" in out
    assert "same --state-dir and --site-name" in out
    assert not (tmp_path / "mistyped").exists()


def test_client_check_reports_the_spend_and_a_wrong_site_name(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from client.ledger import PrivacyLedger

    table, schema = files
    state = tmp_path / "state"
    ledger = PrivacyLedger.open(state / "privacy_ledger.json", site="hospital-a")
    ledger.record(
        run="r", server_round=1, noise_multiplier=1.1, sample_rate=0.01, steps=100,
        max_grad_norm=1.0,
    )  # fmt: skip
    spent = ledger.epsilon(delta=1e-5)

    assert _check(table, schema, state, "--site-name", "hospital-a") == 0
    assert f"ε spent {spent:.4f} of 3" in capsys.readouterr().out

    assert _check(table, schema, state) == 2  # the name defaults to the table's stem
    err = capsys.readouterr().err
    assert "belongs to site 'hospital-a', not 'site'" in err
    assert "pass --site-name hospital-a" in err


def test_client_check_fails_when_the_budget_is_spent(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A unit's ExecStartPre runs --check: a spent site must not start only to decline.
    from client.ledger import PrivacyLedger

    table, schema = files
    state = tmp_path / "state"
    PrivacyLedger.open(state / "privacy_ledger.json", site="site").record(
        run="r", server_round=1, noise_multiplier=0.6, sample_rate=0.5, steps=400,
        max_grad_norm=1.0,
    )  # fmt: skip

    assert _check(table, schema, state) == 2
    err = capsys.readouterr().err
    assert "has spent its whole budget" in err and "does not start" in err
    assert "data steward" in err


def test_client_refuses_a_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    from client.deploy import SupernodeOptions, supernode_command
    from client.errors import SiteConfigError

    ca, key = tmp_path / "ca.crt", tmp_path / "site.key"
    ca.write_text("ssh-ed25519 AAAA not a certificate\n")
    key.write_text("x")
    opts = SupernodeOptions(superlink="127.0.0.1:9092", ca_cert=ca, private_key=key)

    with pytest.raises(SiteConfigError, match=r"--ca: .*ca.crt is not a readable PEM certificate"):
        supernode_command(None, opts, tmp_path / "node.toml")  # type: ignore[arg-type]


def test_schema_draft_warns_about_private_rows(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, _ = files
    out = tmp_path / "draft.json"

    with pytest.warns(UserWarning, match="private rows"):
        assert main(["schema", "draft", str(table), "-o", str(out)]) == 0

    assert out.exists() and "review" in capsys.readouterr().out.lower()


def test_simulate_with_data_but_no_schema_is_refused(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, _ = files
    code = main(["simulate", "--data", str(table), "--out", str(tmp_path / "o")])
    assert code == 2 and "needs --schema" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "server"])
def test_flower_commands_refuse_an_unknown_generator_before_anything_starts(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [command, "--generator", "dp-kopula", "--out", str(out)]
    if command == "server":
        args += ["--schema", str(Path("shared/data/cohort_schema.json").resolve()), "--insecure"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown generator 'dp-kopula'" in err and "'dp-copula'" in err
    assert not out.exists()  # no site table, holdout or SuperLink log was written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--holdout", "0"], "--holdout 0 must be a share strictly between 0 and 1"),
        (["--holdout", "-0.1"], "--holdout -0.1 must be a share strictly between 0 and 1"),
        (["--schema", "shared/data/cohort_schema.json"], "was given without --data"),
        (["--synthetic-rows", "0"], "--synthetic-rows 0 must be at least 1"),
        (["--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
        (["--sites", "1", "--secure-aggregation"], "--secure-aggregation needs at least 2 sites"),
        (["--epsilon", "0.00001"], r"ε = 1e-05 \(δ = 1e-05\) cannot be reached with 450 steps"),
    ],
)
def test_simulate_refuses_a_bad_option_before_anything_starts(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert main(["simulate", *args, "--out", str(out)]) == 2

    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # no site table, holdout or SuperLink log was written


def test_sample_refuses_zero_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", "--model", str(tmp_path), "--n", "0"]) == 2
    assert "--n 0 must be at least 1" in capsys.readouterr().err


def test_client_check_refuses_secure_mode_without_its_generator(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # torchcsprng is not installed here (no build for this torch): a site asking for
    # --secure-mode must hear so before joining, not at its first round.
    from importlib import util

    table, schema = files
    if util.find_spec("torchcsprng") is not None:
        pytest.skip("torchcsprng is installed here")

    assert _check(table, schema, tmp_path / "state", "--secure-mode") == 2

    err = capsys.readouterr().err
    assert "--secure-mode needs the torchcsprng package" in err
    assert "without --secure-mode" in err
