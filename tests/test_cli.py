"""The ``fedsynth`` command: clear one-message errors, never a traceback."""

from __future__ import annotations

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
