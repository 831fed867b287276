"""Tests of the evaluation report (JSON, HTML in headless Chromium), CLI, errors and helpers."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.cohort import generate_cohort
from shared.errors import DataValidationError
from shared.evaluation import EvaluationError, Limits, evaluate, write_report
from shared.evaluation.association import association_matrix
from shared.evaluation.cli import add_parser
from shared.evaluation.fidelity import marginals
from shared.evaluation.inputs import jsonable
from shared.schema import Schema
from shared.tables import validate_frame

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
FIGURES = {"distributions", "associations", "utility", "dcr", "ate"}
SMALL = Limits(
    detection_rows=400, importance_rows=200, importance_repeats=1, bootstrap_resamples=100
)
PRIVACY_REPORT = {
    "generator": "dp-vae",
    "sites": [
        {"site": "site-a", "epsilon": 2.5, "delta": 1e-5, "accountant": "rdp"},
        {"site": "site-b", "epsilon": 2.75, "delta": 1e-5, "accountant": "rdp"},
    ],
}


def _table(schema: Schema, n: int, seed: int) -> pd.DataFrame:
    return validate_frame(generate_cohort(n, seed=seed), schema)


@pytest.fixture(scope="module")
def report_dir(cohort: Schema, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.json and report.html of a full evaluation (every section, every figure)."""
    result = evaluate(
        _table(cohort, 600, 2),
        _table(cohort, 600, 3),
        cohort,
        train=_table(cohort, 600, 1),
        privacy_report=PRIVACY_REPORT,
        limits=SMALL,
    )
    out = tmp_path_factory.mktemp("report")
    write_report(result, out)
    return out


# ------------------------------------------------------------------- report files
def test_report_json_is_strict_json_with_sizes_and_sites(report_dir: Path) -> None:
    def no_nan(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    report = json.loads((report_dir / "report.json").read_text(), parse_constant=no_nan)

    assert report["sizes"]["detection_rows"] == SMALL.detection_rows
    assert report["privacy"]["sizes"]["reference_rows_each"] == 600
    assert [s["epsilon"] for s in report["summary"]["sites"]] == [2.5, 2.75]
    assert "2.75" in report["summary"]["privacy_note"]
    assert all("rule" in v and "text" in v for v in report["summary"]["verdicts"])


def test_report_html_is_self_contained(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    images = re.findall(r'<img[^>]*src="([^"]*)"', html)

    assert len(images) == len(FIGURES)
    for src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "default-src 'none'" in html  # the browser may fetch nothing else
    assert html.index("Summary") < html.index("Fidelity")
    assert "site-b" in html and "2.750" in html


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(
                "CI is set but /usr/bin/chromium is missing; install it (apt-get install -y chromium)"
            )
        pytest.skip(
            "/usr/bin/chromium is not installed (apt-get install -y chromium); set CI to fail instead"
        )
    html = (report_dir / "report.html").read_text()
    # A copy that reports, once loaded, whether each image decoded. The CSP keeps
    # forbidding every image source but data: URIs; only the inline script is allowed.
    probe = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    probe = probe.replace(
        "</body>",
        "<script>window.addEventListener('load', () => { document.body.dataset.images = "
        "Array.from(document.images).map(i => i.closest('figure').id + ':' + "
        "(i.complete && i.naturalWidth > 0 ? 'ok' : 'broken')).join(','); });</script></body>",
    )
    probe_path = tmp_path / "probe.html"
    probe_path.write_text(probe)
    screenshot = tmp_path / "report.png"

    shot = _chromium(
        f"--screenshot={screenshot}",
        "--window-size=1280,4000",
        (report_dir / "report.html").as_uri(),
    )
    dom = _chromium("--dump-dom", probe_path.as_uri())

    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 50_000  # a blank page is a few kB
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="([^"]*)"', dom.stdout)
    assert found, "the probe script did not run"
    status = dict(item.split(":") for item in found.group(1).split(","))
    assert status == {f"fig-{name}": "ok" for name in FIGURES}


# ------------------------------------------------------------------- CLI
def test_cli_writes_both_reports(
    cohort: Schema, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    paths = {}
    for name, seed in (("holdout", 2), ("synthetic", 3), ("train", 1)):
        paths[name] = tmp_path / f"{name}.csv"
        generate_cohort(300, seed=seed).to_csv(paths[name], index=False)
    schema_path = tmp_path / "schema.json"
    cohort.save(schema_path)
    report_path = tmp_path / "privacy_report.json"
    report_path.write_text(json.dumps(PRIVACY_REPORT))
    parser = argparse.ArgumentParser(prog="fedsynth")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "evaluate",
            "--real",
            str(paths["holdout"]),
            "--synthetic",
            str(paths["synthetic"]),
            "--schema",
            str(schema_path),
            "--train",
            str(paths["train"]),
            "--privacy-report",
            str(report_path),
            "--target",
            "ldl_12m",
            "--out",
            str(tmp_path / "out"),
        ]
    )

    # Execute
    code = args.handler(args)

    # Assert
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["utility"]["task"] == "regression"
    assert set(report["utility"]["models"]["linear"]["tstr"]) == {"r2", "mae"}
    assert report["inputs"]["train"] == str(paths["train"])
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert "report.html" in capsys.readouterr().out


# ------------------------------------------------------------------- skipped sections
def test_missing_train_and_roles_skip_sections_with_reasons(cohort: Schema) -> None:
    doc = cohort.to_dict()
    doc.pop("roles")
    bare = Schema.from_dict(doc)

    result = evaluate(_table(bare, 300, 2), _table(bare, 300, 3), bare, limits=SMALL)

    assert "--train" in result["privacy"]["reason"]
    assert "--target" in result["utility"]["reason"]
    assert "--treatment" in result["causal"]["reason"]
    assert result["summary"]["counts"]["not run"] == 7
    assert "--privacy-report" in result["summary"]["privacy_note"]


def test_without_train_utility_uses_a_split_and_binary_outcomes_work(cohort: Schema) -> None:
    result = evaluate(
        _table(cohort, 400, 2),
        _table(cohort, 400, 3),
        cohort,
        outcome="mace",
        target="diabetes",
        limits=SMALL,
    )

    assert "split of --real" in result["utility"]["train_source"]
    assert result["utility"]["rows"]["test"] == 120
    assert -1.0 <= result["causal"]["real"]["ate"] <= 1.0  # a risk difference


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "nope"}, r"--target 'nope' is not a column of schema"),
        (
            {"treatment": "smoker"},
            r"treatment column 'smoker' must be categorical with exactly two",
        ),
        (
            {"treatment": "sex", "outcome": "smoker"},
            r"outcome column 'smoker' must be numeric or binary",
        ),
        ({"privacy_report": "/nonexistent/privacy_report.json"}, r"privacy_report.json not found"),
        ({"privacy_report": {"sites": [{"site": "a"}]}}, r"sites\[0\] needs numeric 'epsilon'"),
    ],
)
def test_bad_arguments_are_explained(cohort: Schema, kwargs: dict[str, Any], message: str) -> None:
    frame = _table(cohort, 50, 1)

    with pytest.raises(EvaluationError, match=message):
        evaluate(frame, frame, cohort, **kwargs)


def test_explicit_treatment_needs_an_outcome(cohort: Schema) -> None:
    doc = cohort.to_dict()
    doc.pop("roles")
    bare = Schema.from_dict(doc)
    frame = _table(bare, 50, 1)

    with pytest.raises(EvaluationError, match="pass --outcome"):
        evaluate(frame, frame, bare, treatment="statin")


def test_tables_are_validated_and_must_not_be_tiny(cohort: Schema, tmp_path: Path) -> None:
    frame = _table(cohort, 50, 1)
    bad = tmp_path / "synthetic.csv"
    generate_cohort(20, seed=1).drop(columns="sex").to_csv(bad, index=False)

    with pytest.raises(DataValidationError, match=r"(?s)synthetic\.csv.*\['sex'\]"):
        evaluate(frame, bad, cohort)
    with pytest.raises(EvaluationError, match="the synthetic table has 5 row"):
        evaluate(frame, frame.head(5), cohort)
    with pytest.raises(EvaluationError, match="dictionary returned by evaluate"):
        write_report({"fidelity": {}}, tmp_path)


# ------------------------------------------------------------------- helpers
def test_jsonable_turns_nan_and_numpy_into_json() -> None:
    out = jsonable({"a": np.float32(np.nan), "b": (np.int64(3), np.arange(2)), "c": np.bool_(True)})

    assert out == {"a": None, "b": [3, [0, 1]], "c": True}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=10, max_value=60))
def test_any_table_matches_itself_and_associations_are_bounded(
    cohort: Schema, seed: int, n: int
) -> None:
    frame = _table(cohort, n, seed)

    marg = marginals(frame, frame, cohort)
    matrix = association_matrix(frame, cohort)

    assert marg["tvd_max"] == 0.0 and marg["ks_max"] in (0.0, None)
    assert np.all(np.abs(matrix) <= 1.0 + 1e-9) and np.allclose(matrix, matrix.T)
    assert np.allclose(np.diag(matrix), 1.0)
