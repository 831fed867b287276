"""Printing and summarising the causal benchmark's figures (:mod:`simulations.benchmarks.causal`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample SD (``None`` where there are too few values)."""
    mean = float(np.mean(values)) if values else None
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarise(docs: list[dict[str, Any]], generators: list[str]) -> list[dict[str, Any]]:
    """Per data set and generator: mean ± SD of the synthetic ATE (and ψ), passing seeds."""
    out = []
    for name in dict.fromkeys(d["data"] for d in docs):
        mine = [d for d in docs if d["data"] == name]
        for gen in generators:
            ates = [d[gen]["ate"] for d in mine if d[gen].get("ate") is not None]
            psis = [d[gen]["effect_estimate"] for d in mine if "effect_estimate" in d[gen]]
            ate_mean, ate_sd = _mean_sd(ates)
            row: dict[str, Any] = {
                "data": name,
                "generator": gen,
                "seeds": len(mine),
                "ate_mean": ate_mean,
                "ate_sd": ate_sd,
                "within_15pct": sum(bool(d[gen]["within_15pct"]) for d in mine),
                "ci_overlap": sum(bool(d[gen]["ci_overlap"]) for d in mine),
                "passed": sum(bool(d[gen]["pass"]) for d in mine),
            }
            if psis:
                row["effect_estimate_mean"], row["effect_estimate_sd"] = _mean_sd(psis)
            out.append(row)
    return out


def _ci(d: dict[str, Any]) -> str:
    if d.get("ate") is None:
        return f"not estimable ({d.get('status')})"
    return f"{d['ate']:7.2f}  [{d['ci_low']:7.2f}, {d['ci_high']:7.2f}]"


def report(doc: dict[str, Any], generators: list[str]) -> None:
    """Print one data set's figures as a readable block."""
    print(f"\n== {doc['data']} (seed {doc['seed']}, site rows {doc['site_rows']}) ==")
    if doc["true_ate"] is not None:
        print(f"  true ATE                 {doc['true_ate']:7.2f}")
    print(f"  real AIPW ATE [95% CI]   {_ci(doc['real'])}")
    for gen in generators:
        d = doc[gen]
        ref = "true" if doc["true_ate"] is not None else "real"
        dp = (
            "no DP: the real rows resampled"
            if d["sigma"] is None
            else f"σ {d['sigma']:.2f}, max site ε {d['site_epsilon_max']:.2f}"
        )
        if "effect_estimate" in d:
            dp += f", released estimate ψ {d['effect_estimate']:.2f}"
        print(
            f"  {gen:<8} AIPW ATE        {_ci(d)}  within 15% of {ref}: {d['within_15pct']}, "
            f"CI overlap: {d['ci_overlap']} -> {'PASS' if d['pass'] else 'FAIL'}  "
            f"(treated {d.get('treated_share') or 0:.2f}, propensity KS "
            f"{d['propensity_ks'] or float('nan'):.3f}, {dp})"
        )
        tstr = "—" if d["tstr_auc"] is None else f"{d['tstr_auc']:.3f}"
        print(
            f"  {gen:<8} fidelity: KS mean {d['ks_mean']:.3f}, TVD mean {d['tvd_mean']:.3f}, "
            f"association diff {d['assoc_diff_mean']:.3f}; TSTR AUC {tstr}"
        )


def _sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" + ("" if sd is None else f" ± {sd:.2f}")


def report_summary(rows: list[dict[str, Any]]) -> None:
    """Print the summary table (one line per data set and generator)."""
    print("\n== summary (mean ± SD over seeds; passing = within 15% and CI overlap) ==")
    for r in rows:
        psi = ""
        if "effect_estimate_mean" in r:
            psi = f", released ψ {_sd(r['effect_estimate_mean'], r['effect_estimate_sd'])}"
        print(
            f"  {r['data']:<7} {r['generator']:<9} ATE {_sd(r['ate_mean'], r['ate_sd'])}{psi}; "
            f"within 15% {r['within_15pct']}/{r['seeds']}, overlap {r['ci_overlap']}/{r['seeds']}, "
            f"passing {r['passed']}/{r['seeds']}"
        )
