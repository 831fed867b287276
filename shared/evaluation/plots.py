"""Figures of the report, drawn from the result dictionary alone.

Every figure is rendered from numbers already in ``report.json`` (binned
distributions, matrices, scores), so the HTML can be rebuilt from the JSON and
no row-level data reaches the plotting code. Figures use the object API with the
Agg canvas (no pyplot global state, no display needed) and come back as
base64-encoded PNG for embedding as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REAL, SYN = "#1f77b4", "#ff7f0e"
DPI = 80


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _column_panel(ax: Axes, name: str, entry: dict[str, Any]) -> None:
    plot = entry["plot"]
    real, syn = np.asarray(plot["real"], float), np.asarray(plot["synthetic"], float)
    if "edges" in plot:
        edges = np.asarray(plot["edges"], float)
        width = np.diff(edges)
        ax.bar(edges[:-1], real, width=width, align="edge", color=REAL, alpha=0.5, label="real")
        ax.bar(edges[:-1], syn, width=width, align="edge", color=SYN, alpha=0.5, label="synthetic")
        score = entry.get("ks")
        label = "KS n/a" if score is None else f"KS {score:.3f}"
        if entry["missing_real"] or entry["missing_synthetic"]:
            label += f", missing {entry['missing_real']:.0%}/{entry['missing_synthetic']:.0%}"
    else:
        pos = np.arange(len(plot["categories"]))
        ax.bar(pos - 0.2, real, width=0.4, color=REAL, label="real")
        ax.bar(pos + 0.2, syn, width=0.4, color=SYN, label="synthetic")
        ax.set_xticks(pos, [str(c)[:10] for c in plot["categories"]], rotation=30, fontsize=7)
        label = f"TVD {entry['tvd']:.3f}"
    ax.set_title(f"{name}\n{label}", fontsize=8)
    ax.tick_params(labelsize=7)


def distributions(columns: dict[str, Any]) -> str:
    """Grid of real-vs-synthetic distributions, one panel per column."""
    n = len(columns)
    ncols = 4
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, entry) in zip(axes, columns.items(), strict=False):
        _column_panel(ax, name, entry)
    for ax in axes[n:]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    fig.suptitle("Share of rows per bin / category: real (blue) vs synthetic (orange)")
    return _png(fig)


def associations(assoc: dict[str, Any]) -> str:
    """Heatmaps of the real, synthetic and |difference| association matrices."""
    names = assoc["columns"]
    real, syn = np.asarray(assoc["real"], float), np.asarray(assoc["synthetic"], float)
    panels = (("real", real, "RdBu_r", -1.0), ("synthetic", syn, "RdBu_r", -1.0))
    fig = Figure(figsize=(17, 5.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (title, mat, cmap, low) in zip(
        axes, (*panels, ("|real − synthetic|", np.abs(real - syn), "Reds", 0.0)), strict=True
    ):
        image = ax.imshow(mat, cmap=cmap, vmin=low, vmax=1.0)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.7)
    fig.suptitle("Pairwise association (Pearson r, Cramér's V, correlation ratio η)")
    return _png(fig)


def utility(util: dict[str, Any]) -> str:
    """Bars of TRTR and TSTR scores per model family and metric."""
    families = list(util["models"])
    metrics = ["auc", "accuracy", "f1"] if util["task"] == "classification" else ["r2", "mae"]
    fig = Figure(figsize=(4 * len(metrics), 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    pos = np.arange(len(families))
    for ax, metric in zip(axes, metrics, strict=True):
        for offset, mode, color in ((-0.2, "trtr", REAL), (0.2, "tstr", SYN)):
            values = [util["models"][f][mode].get(metric) for f in families]
            heights = [np.nan if v is None else v for v in values]
            ax.bar(pos + offset, heights, width=0.4, color=color, label=mode.upper())
        ax.set_xticks(pos, [f.replace("_", " ") for f in families])
        ax.set_title(metric.upper() if metric != "r2" else "R²")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Predicting {util['target']!r} on real test rows: TRTR vs TSTR")
    return _png(fig)


def dcr(priv: dict[str, Any]) -> str:
    """Histograms of synthetic rows' distances to the closest train and holdout rows."""
    hist = priv["dcr"]["histogram"]
    edges = np.asarray(hist["edges"], float)
    width = np.diff(edges)
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for key, color, label in (("to_train", SYN, "to train"), ("to_holdout", REAL, "to holdout")):
        ax.bar(
            edges[:-1], hist[key], width=width, align="edge", color=color, alpha=0.5, label=label
        )
    ax.set_xlabel("distance to closest record (schema encoding)")
    ax.set_ylabel("synthetic rows")
    share = priv["dcr"]["share_closer_to_train"]
    ax.set_title(f"DCR: {share:.1%} of synthetic rows are closer to train (0.5 = no signal)")
    ax.legend()
    return _png(fig)


def ate(cau: dict[str, Any]) -> str:
    """ATE with 95% CIs on both tables, and the propensity-score distributions."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_ate, ax_ps = fig.subplots(1, 2)
    for i, (side, color) in enumerate((("real", REAL), ("synthetic", SYN))):
        est = cau[side]
        if est["status"] != "ok":
            continue
        err = [[est["ate"] - est["ci_low"]], [est["ci_high"] - est["ate"]]]
        ax_ate.errorbar([i], [est["ate"]], yerr=err, fmt="o", color=color, capsize=8)
        bins = np.linspace(0, 1, len(est["propensity_histogram"]) + 1)
        ax_ps.bar(
            bins[:-1],
            est["propensity_histogram"],
            width=np.diff(bins),
            align="edge",
            color=color,
            alpha=0.5,
            label=side,
        )
    ax_ate.axhline(0.0, color="grey", linewidth=0.8)
    ax_ate.set_xticks([0, 1], ["real", "synthetic"])
    ax_ate.set_xlim(-0.7, 1.7)
    ax_ate.set_title(f"ATE of {cau['treatment']!r} on {cau['outcome']!r} (95% CI)")
    ax_ps.set_title("Propensity scores")
    ax_ps.set_xlabel("P(treated | covariates)")
    ax_ps.legend()
    return _png(fig)


def render_all(result: dict[str, Any]) -> list[dict[str, str]]:
    """Every figure the result supports, as ``{"id", "title", "png"}`` in report order."""
    figures = [
        (
            "distributions",
            "Column distributions",
            distributions(result["fidelity"]["marginals"]["columns"]),
        ),
        ("associations", "Association matrices", associations(result["fidelity"]["associations"])),
    ]
    if result["utility"].get("status") != "skipped":
        figures.append(("utility", "TSTR vs TRTR", utility(result["utility"])))
    if result["privacy"].get("status") != "skipped":
        figures.append(("dcr", "Distance to closest record", dcr(result["privacy"])))
    if result["causal"].get("status") != "skipped":
        figures.append(("ate", "Average treatment effect", ate(result["causal"])))
    return [{"id": i, "title": t, "png": p} for i, t, p in figures]
