"""Python entry points: :func:`evaluate` a synthetic table, :func:`write_report` it.

``evaluate`` loads and validates the tables against the public schema, resolves
the roles, runs each check (fidelity, utility, privacy, causal), adds the
plain-language summary and returns one JSON-ready dictionary. ``write_report``
turns that dictionary into ``report.json`` and a self-contained ``report.html``;
the figures are drawn from the dictionary alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from shared.evaluation import association, causal, fidelity, plots, privacy, utility
from shared.evaluation.errors import EvaluationError
from shared.evaluation.html_report import render
from shared.evaluation.inputs import (
    Limits,
    TableLike,
    as_schema,
    as_table,
    jsonable,
    load_privacy_report,
    resolve_roles,
)
from shared.evaluation.summary import summarise
from shared.schema import Schema

REPORT_VERSION = 1
HOLDOUT_SPLIT = 0.7
NOTE = (
    "This report holds aggregate statistics of the real tables (histograms, correlations, model "
    "scores, distances) computed without differential privacy: share it as you would share "
    "summary statistics of the real data, not as you would share the synthetic table."
)


def _describe(table: TableLike | None) -> str | None:
    if table is None:
        return None
    return "<DataFrame>" if isinstance(table, pd.DataFrame) else str(table)


def _split(real: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng([seed, 1]).permutation(len(real))
    cut = round(HOLDOUT_SPLIT * len(real))
    train = real.iloc[np.sort(order[:cut])].reset_index(drop=True)
    test = real.iloc[np.sort(order[cut:])].reset_index(drop=True)
    return train, test


def evaluate(
    real: TableLike,
    synthetic: TableLike,
    schema: Schema | str | Path,
    *,
    train: TableLike | None = None,
    target: str | None = None,
    treatment: str | None = None,
    outcome: str | None = None,
    privacy_report: dict[str, Any] | str | Path | None = None,
    seed: int = 0,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Compare a synthetic table with real rows: fidelity, utility, privacy, causal validity.

    Parameters
    ----------
    real : DataFrame, str or Path
        Real holdout rows the generator never saw (the test set of every check).
    synthetic : DataFrame, str or Path
        The synthetic table.
    schema : Schema, str or Path
        The consortium's public schema (or its JSON file).
    train : DataFrame, str or Path, optional
        The real training rows. Needed for the privacy checks; used as the TRTR
        training set (otherwise 70% of ``real`` is, and the rest is the test set).
    target, treatment, outcome : str, optional
        Column roles; each defaults to the schema's ``roles``. Utility needs a
        target, causal validity a treatment and an outcome; missing roles skip
        that check with the reason in the report.
    privacy_report : dict, str or Path, optional
        ``privacy_report.json`` of the run; its per-site ε and δ go in the summary.
    seed : int
        Seed of every sample, split, model and bootstrap (same inputs and seed,
        same report).
    limits : Limits, optional
        Sample sizes of the costly metrics (defaults: :class:`Limits`).

    Returns
    -------
    dict
        JSON-ready result: ``summary``, ``fidelity``, ``utility``, ``privacy``,
        ``causal``, ``inputs``, ``sizes``, ``timings_s``. NaN appears as ``None``.

    Raises
    ------
    EvaluationError, DataValidationError, SchemaError
        For unusable roles, invalid tables or schema, or an unreadable privacy report.
    """
    limits = limits or Limits()
    with threadpool_limits(limits=limits.threads):
        return _evaluate(
            real,
            synthetic,
            schema,
            train=train,
            target=target,
            treatment=treatment,
            outcome=outcome,
            privacy_report=privacy_report,
            seed=seed,
            limits=limits,
        )


def _evaluate(
    real: TableLike,
    synthetic: TableLike,
    schema: Schema | str | Path,
    *,
    train: TableLike | None,
    target: str | None,
    treatment: str | None,
    outcome: str | None,
    privacy_report: dict[str, Any] | str | Path | None,
    seed: int,
    limits: Limits,
) -> dict[str, Any]:
    schema = as_schema(schema)
    roles = resolve_roles(schema, target, treatment, outcome)
    sites = load_privacy_report(privacy_report) if privacy_report is not None else None
    real_f = as_table(real, schema, "real")
    syn_f = as_table(synthetic, schema, "synthetic")
    train_f = as_table(train, schema, "train") if train is not None else None
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 3)
        return out

    fid = {
        "marginals": timed("marginals", fidelity.marginals, real_f, syn_f, schema),
        "associations": timed("associations", association.associations, real_f, syn_f, schema),
        "mutual_information": timed(
            "mutual_information", association.mutual_information, real_f, syn_f, schema
        ),
        "detection": timed("detection", fidelity.detection, real_f, syn_f, schema, limits, seed),
    }
    if roles.target is None:
        util: dict[str, Any] = {
            "status": "skipped",
            "reason": "no target column: pass --target or add a 'target' role to the schema",
        }
    else:
        if train_f is not None:
            trtr, test, source = train_f, real_f, "the real training rows (--train)"
        else:
            trtr, test = _split(real_f, seed)
            source = (
                f"a {HOLDOUT_SPLIT:.0%} split of --real (no --train given); all models are "
                f"tested on the other {1 - HOLDOUT_SPLIT:.0%}"
            )
        util = timed(
            "utility", utility.utility, trtr, test, syn_f, schema, roles.target, limits, seed
        )
        util["train_source"] = source
    if train_f is None:
        priv: dict[str, Any] = {
            "status": "skipped",
            "reason": "the privacy checks need the real training rows: pass --train",
        }
    else:
        priv = timed("privacy", privacy.privacy, train_f, real_f, syn_f, schema, limits, seed)
    if roles.treatment is None or roles.outcome is None:
        cau: dict[str, Any] = {
            "status": "skipped",
            "reason": "no treatment/outcome: pass --treatment and --outcome or add the roles",
        }
    else:
        cau = timed(
            "causal",
            causal.causal,
            real_f,
            syn_f,
            schema,
            roles.treatment,
            roles.outcome,
            target=roles.target,
            limits=limits,
            seed=seed,
        )
    result: dict[str, Any] = {
        "fedsynth_evaluation_version": REPORT_VERSION,
        "seed": seed,
        "inputs": {
            "schema": schema.name,
            "schema_fingerprint": schema.fingerprint(),
            "real": _describe(real),
            "synthetic": _describe(synthetic),
            "train": _describe(train),
            "real_rows": len(real_f),
            "synthetic_rows": len(syn_f),
            "train_rows": None if train_f is None else len(train_f),
        },
        "roles": {"target": roles.target, "treatment": roles.treatment, "outcome": roles.outcome},
        "sizes": limits.to_dict(),
        "fidelity": fid,
        "utility": util,
        "privacy": priv,
        "causal": cau,
        "privacy_budget": sites,
        "timings_s": timings,
        "note": NOTE,
    }
    result["summary"] = summarise(result)
    return dict(jsonable(result))


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and the self-contained ``report.html`` into ``out_dir``.

    Parameters
    ----------
    result : dict
        The dictionary returned by :func:`evaluate`.
    out_dir : str or Path
        Folder to write to (created if missing).

    Returns
    -------
    tuple of Path
        Paths of ``report.json`` and ``report.html``.
    """
    if not isinstance(result, dict) or "summary" not in result or "fidelity" not in result:
        raise EvaluationError(
            "write_report needs the dictionary returned by evaluate(); got "
            f"{type(result).__name__} without 'summary'/'fidelity'"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(
            f"cannot create output folder {out} ({exc}); pick another --out"
        ) from None
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render(result, plots.render_all(result)), encoding="utf-8")
    return json_path, html_path
