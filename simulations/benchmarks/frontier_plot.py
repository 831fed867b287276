"""The frontier plot: TSTR AUC against ε, one panel per table, baselines included."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; benchmark machines have no display
import matplotlib.pyplot as plt
import pandas as pd

#: Where "no DP" sits on the log-ε axis (labelled ∞).
NO_DP_X = 30.0
STYLES = {
    "local": "o-",
    "distributed": "s-",
    "pooled-dp": "^--",
    "single-best": "v:",
}


def _x(eps: pd.Series) -> list[float]:
    return [NO_DP_X if math.isinf(e) else float(e) for e in eps]


def plot_frontier(summary: pd.DataFrame, path: Path, *, sites: int) -> Path:
    """Draw gradient-boosting TSTR AUC vs ε per table (federated cells at ``sites`` sites).

    Baselines: pooled with DP at each ε (trusted curator), the best single site,
    and horizontal lines for the no-DP pooled generator and TRTR.
    """
    tables = list(summary.table.unique())
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4.2), squeeze=False)
    for ax, table in zip(axes[0], tables, strict=True):
        mine = summary[summary.table == table]
        for family in [f for f in mine.family.unique() if f != "-"]:
            fam = mine[mine.family == family]
            for placement, style in STYLES.items():
                want = 0 if placement == "pooled-dp" else sites
                pts = fam[(fam.placement == placement) & (fam.sites == want)].sort_values("eps")
                if placement == "pooled-dp":  # its no-DP point is the "pooled" cell
                    nodp = fam[fam.placement == "pooled"]
                    pts = pd.concat([pts, nodp]).sort_values("eps")
                if not pts.empty:
                    label = "pooled (curator; ∞ = no DP)" if placement == "pooled-dp" else placement
                    ax.plot(_x(pts.eps), pts.auc_gb, style, label=f"{family} {label}")
        trtr = mine[mine.placement == "trtr"]
        if not trtr.empty:
            ax.axhline(float(trtr.auc_gb.iloc[0]), color="black", lw=1, label="TRTR (real data)")
        ax.set_xscale("log")
        ticks = sorted({e for e in _x(mine.eps[mine.placement != "trtr"])})
        ax.set_xticks(ticks, [("∞" if t == NO_DP_X else f"{t:g}") for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{table} ({sites} sites, Dirichlet label skew)")
        ax.set_xlabel("ε per row (per site); ∞ = no DP")
        ax.set_ylabel("TSTR ROC AUC (gradient boosting)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
