"""The frontier's acceptance checks (issues #4 and #8) on the summary of its cells."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: One-sided 5 % point of the standard normal: an exact-match excess above this many
#: standard errors of chance re-splits fails the output-privacy check.
EXACT_MATCH_Z = 1.645


@dataclass(frozen=True)
class Check:
    """One acceptance check: its name, the figures it compared, and the verdict."""

    table: str
    family: str
    name: str
    detail: str
    verdict: str  # PASS, FAIL or n/a


def _get(
    summary: pd.DataFrame, table: str, family: str, placement: str, eps: float, sites: int
) -> pd.Series | None:
    m = summary[
        (summary.table == table)
        & (summary.family == family)
        & (summary.placement == placement)
        & (summary.eps == eps)
        & (summary.sites == sites)
    ]
    return None if m.empty else m.iloc[0]


def _value(row: pd.Series | None, metric: str) -> float | None:
    return None if row is None or pd.isna(row[metric]) else float(row[metric])


def _fmt(x: float | None) -> str:
    return "missing" if x is None else f"{x:.3f}"


def _compare(x: float | None, y: float | None, test: Callable[[float, float], bool]) -> bool | None:
    return None if x is None or y is None else test(x, y)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def _family_checks(
    summary: pd.DataFrame, table: str, family: str, epsilon: float, sites: int
) -> list[tuple[str, str, bool | None]]:
    rows = {
        p: _get(summary, table, family, p, epsilon, 0 if p == "pooled-dp" else sites)
        for p in ("local", "distributed", "pooled-dp", "single-best")
    }
    auc = {p: _value(r, "auc_gb") for p, r in rows.items()}
    loc, dist, pool, single = auc["local"], auc["distributed"], auc["pooled-dp"], auc["single-best"]
    out: list[tuple[str, str, bool | None]] = [
        (
            "federated (local) >= pooled-DP - 0.02",
            f"AUC local {_fmt(loc)}, pooled-DP {_fmt(pool)}",
            _compare(loc, pool, lambda x, y: x >= y - 0.02),
        ),
        (
            "federated (local) > best single site",
            f"AUC local {_fmt(loc)}, best single site {_fmt(single)}",
            _compare(loc, single, lambda x, y: x > y),
        ),
        (
            "distributed within 0.02 of pooled-DP",
            f"AUC distributed {_fmt(dist)}, pooled-DP {_fmt(pool)}",
            _compare(dist, pool, lambda x, y: abs(x - y) <= 0.02),
        ),
        (
            "distributed > local",
            f"AUC distributed {_fmt(dist)}, local {_fmt(loc)}",
            _compare(dist, loc, lambda x, y: x > y),
        ),
    ]
    for place in ("local", "distributed"):
        tv = _value(rows[place], "tv_similarity")
        ratio = _value(rows[place], "association_ratio")
        out.append(
            (f"{place}: TV similarity >= 0.9", _fmt(tv), _compare(tv, 0.9, lambda x, y: x >= y))
        )
        out.append(
            (
                f"{place}: association ratio <= 0.5",
                _fmt(ratio),
                _compare(ratio, 0.5, lambda x, y: x <= y),
            )
        )
    mine = summary[(summary.table == table) & (summary.family == family)]
    # Not the single site: its rows are label-skewed, not exchangeable with the holdout,
    # so its synthetic rows sit closer to them without any memorisation.
    dp = mine[np.isfinite(mine.eps) & mine.dcr_share.notna() & (mine.placement != "single-best")]
    if dp.empty:
        out.append(("DCR share <= 0.55 (every ε)", "not measured", None))
        out.append(("exact match <= chance (every ε)", "not measured", None))
    else:
        worst = float(dp.dcr_share.max())
        out.append(("DCR share <= 0.55 (every ε)", f"worst {worst:.3f}", worst <= 0.55))
        out.append(_exact_match_check(dp))
    return out


def _exact_match_check(dp: pd.DataFrame) -> tuple[str, str, bool | None]:
    """Exact matches no higher than chance, at every ε: each cell's mean excess over
    chance across seeds, in standard errors of the chance re-splits
    (:func:`shared.evaluation.privacy.resplit_excess`; SE² = mean variance / seeds).
    The worst cell above :data:`EXACT_MATCH_Z` fails.

    A summary without the re-split columns (written before them) falls back to the
    size-matched difference, and any positive excess fails.
    """
    name = "exact match <= chance (every ε)"
    if "exact_match_excess" in dp:
        excess = dp["exact_match_excess"].to_numpy(float)
        var = dp["exact_match_resplit_var"].to_numpy(float)
        se = np.sqrt(var / np.maximum(dp["exact_match_seeds"].to_numpy(float), 1.0))
    else:
        excess = (dp["exact_match"] - dp["exact_match_chance"]).to_numpy(float)
        se = np.zeros_like(excess)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, excess / np.where(se > 0, se, 1.0), np.where(excess > 0, np.inf, 0.0))
    z = np.where(np.isnan(excess), np.nan, z)
    if np.all(np.isnan(z)):
        return (name, "not measured", None)
    i = int(np.nanargmax(z))
    detail = f"worst excess over chance {excess[i]:+.4f}, {z[i]:+.1f} SE (re-split SE {se[i]:.4f})"
    return (name, detail, bool(z[i] <= EXACT_MATCH_Z))


def acceptance(summary: pd.DataFrame, *, epsilon: float = 1.0, sites: int = 5) -> list[Check]:
    """The acceptance checks of issues #4 and #8 at ``epsilon`` with ``sites`` sites.

    AUC is the gradient-boosting TSTR AUC. Fidelity is checked on the local and
    distributed cells at ``epsilon``; output privacy at every finite ε of the
    table (its worst cell; the single-site baseline is left out, since its
    skewed members are not exchangeable with the holdout). A check whose cells
    are missing is ``n/a``.
    """
    checks: list[Check] = []
    for table in summary.table.unique():
        families = summary[(summary.table == table) & (summary.family != "-")].family.unique()
        for family in families:
            for name, detail, ok in _family_checks(summary, table, family, epsilon, sites):
                checks.append(Check(str(table), str(family), name, detail, _verdict(ok)))
    return checks
