"""Plain-language verdicts with the thresholds behind them.

Each verdict grades one headline number as ``good``, ``fair`` or ``poor`` and
states the rule, so a reader can disagree with a threshold without re-running
anything. The thresholds are conventions for a first look, not standards:
they are written into ``report.json`` next to each verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """Grade a number: ``good`` within ``good``, ``fair`` within ``fair``, else ``poor``.

    With ``higher_is_better`` the bounds are minimums, otherwise maximums.
    """

    aspect: str
    measures: str
    good: float
    fair: float
    higher_is_better: bool = False
    wording: str = ""

    def grade(self, value: float) -> str:
        """Return ``good``, ``fair`` or ``poor`` for ``value``."""
        if self.higher_is_better:
            return "good" if value >= self.good else "fair" if value >= self.fair else "poor"
        return "good" if value <= self.good else "fair" if value <= self.fair else "poor"

    def text(self) -> str:
        """The rule in words."""
        if self.wording:
            return self.wording
        word = "at least" if self.higher_is_better else "at most"
        return f"good if {word} {self.good:g}, fair if {word} {self.fair:g}, else poor"


MARGINALS = Rule(
    "fidelity: marginals", "worst of mean KS (numeric) and mean TVD (categorical)", 0.10, 0.20
)
ASSOCIATIONS = Rule(
    "fidelity: associations", "mean |association difference| over column pairs", 0.04, 0.08
)
DETECTION = Rule(
    "fidelity: detection", "AUC of a classifier telling real from synthetic rows", 0.60, 0.75
)
UTILITY = Rule(
    "utility: TSTR vs TRTR", "largest drop TRTR − TSTR in the primary metric", 0.05, 0.10
)
IMPORTANCE = Rule(
    "utility: feature importance",
    "mean Spearman rank agreement of TSTR vs TRTR permutation importances",
    0.60,
    0.30,
    True,
)
EXACT = Rule(
    "privacy: exact copies",
    "exact-match rate to train minus rate to holdout, beyond what random re-splits give",
    0.001,
    0.01,
)
DCR = Rule(
    "privacy: distance to closest record",
    "share of synthetic rows closer to train than holdout (0.5 = no signal)",
    0.55,
    0.60,
)
MIA = Rule(
    "privacy: membership inference", "AUC of the distance-based attack (0.5 = guessing)", 0.55, 0.60
)
ATE = Rule(
    "causal: treatment effect",
    "average treatment effect (AIPW)",
    0,
    1,
    wording="good if the synthetic ATE lies inside the real 95% CI, fair if the two CIs overlap, else poor",
)
PROPENSITY = Rule(
    "causal: propensity agreement", "KS between real and synthetic propensity scores", 0.10, 0.20
)


def _verdict(
    rule: Rule, value: float | None, shown: str | None = None, note: str = ""
) -> dict[str, Any]:
    if value is None:
        return {
            "aspect": rule.aspect,
            "verdict": "not run",
            "value": None,
            "value_text": "n/a",
            "measures": rule.measures,
            "rule": rule.text(),
            "text": f"{rule.aspect}: not run. {note}".strip(),
        }
    grade = rule.grade(value)
    shown = shown if shown is not None else f"{value:.3f}"
    return {
        "aspect": rule.aspect,
        "verdict": grade,
        "value": value,
        "value_text": shown,
        "measures": rule.measures,
        "rule": rule.text(),
        "text": f"{rule.aspect}: {grade} ({rule.measures} = {shown}; {rule.text()}). {note}".strip(),
    }


def _fidelity(fid: dict[str, Any]) -> list[dict[str, Any]]:
    marg = fid["marginals"]
    parts = [v for v in (marg["ks_mean"], marg["tvd_mean"]) if v is not None]
    return [
        _verdict(MARGINALS, max(parts) if parts else None),
        _verdict(ASSOCIATIONS, fid["associations"]["abs_diff_mean"]),
        _verdict(DETECTION, fid["detection"]["auc"]),
    ]


def _utility(util: dict[str, Any]) -> list[dict[str, Any]]:
    if util.get("status") == "skipped":
        return [_verdict(r, None, note=util["reason"]) for r in (UTILITY, IMPORTANCE)]
    failed = [f for f, m in util["models"].items() if m["tstr"].get("status") == "not_trainable"]
    if failed:
        why = util["models"][failed[0]]["tstr"]["reason"]
        out = _verdict(UTILITY, 1.0, "no model", note=f"No TSTR model could be trained: {why}.")
    else:
        out = _verdict(
            UTILITY, util["worst_gap"], note=f"Primary metric: {util['primary_metric']}."
        )
    note = "Noisy when few columns carry signal or the tables are small."
    return [out, _verdict(IMPORTANCE, util["importance_spearman_mean"], note=note)]


def _privacy(priv: dict[str, Any]) -> list[dict[str, Any]]:
    if priv.get("status") == "skipped":
        return [_verdict(r, None, note=priv["reason"]) for r in (EXACT, DCR, MIA)]
    em = priv["exact_match"]
    note = f"{em['train_rate']:.1%} of synthetic rows equal a training row."
    if "excess_over_chance" in em:
        excess = em["excess_over_chance"]
        note += (
            f" Chance alone (random re-splits of train and holdout) moves it by "
            f"±{em['resplit_sd']:.4f}; p = {em['resplit_p_value']:.2f}."
        )
    else:  # a report written before the re-split test
        excess = em["train_rate_size_matched"] - em["holdout_rate_size_matched"]
    return [
        _verdict(EXACT, excess, note=note),
        _verdict(DCR, priv["dcr"]["share_closer_to_train"]),
        _verdict(MIA, priv["membership_inference"]["auc"]),
    ]


def _causal(cau: dict[str, Any]) -> list[dict[str, Any]]:
    if cau.get("status") == "skipped" or "difference" not in cau:
        why = cau.get("reason") or next(
            (cau[s]["reason"] for s in ("real", "synthetic") if cau[s]["status"] != "ok"), ""
        )
        return [_verdict(r, None, note=why) for r in (ATE, PROPENSITY)]
    code = 0.0 if cau["synthetic_within_real_ci"] else 1.0 if cau["ci_overlap"] else 2.0
    shown = f"ATE real {cau['real']['ate']:.3g}, synthetic {cau['synthetic']['ate']:.3g}"
    return [
        _verdict(ATE, code, shown, note=f"Difference {cau['difference']:.3g}."),
        _verdict(PROPENSITY, cau["propensity_ks"]),
    ]


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Verdicts for every section of ``result`` and the per-site privacy budget.

    Parameters
    ----------
    result : dict
        The output of :func:`shared.evaluation.api.evaluate` before its summary.

    Returns
    -------
    dict
        ``verdicts`` (aspect, verdict, value, value_text, rule, text), ``counts`` per
        grade, ``headline`` (one sentence), ``sites`` (ε, δ per site, or
        ``None``) and ``privacy_note``.
    """
    verdicts = [
        *_fidelity(result["fidelity"]),
        *_utility(result["utility"]),
        *_privacy(result["privacy"]),
        *_causal(result["causal"]),
    ]
    counts = {
        g: sum(v["verdict"] == g for v in verdicts) for g in ("good", "fair", "poor", "not run")
    }
    sites = result.get("privacy_budget")
    if sites:
        worst = max(sites, key=lambda s: s["epsilon"])
        note = (
            f"Formal guarantee: each site's records are (ε, δ)-DP; the largest ε is "
            f"{worst['epsilon']:.3g} (site {worst['site']}, δ = {worst['delta']:.1e}). The "
            "empirical checks above can only detect leakage, never prove its absence."
        )
    else:
        note = (
            "No privacy report was given, so this table has no stated DP guarantee here; pass "
            "--privacy-report privacy_report.json to show each site's ε and δ."
        )
    headline = (
        f"{counts['good']} good, {counts['fair']} fair, {counts['poor']} poor"
        + (f", {counts['not run']} not run" if counts["not run"] else "")
        + "."
    )
    return {
        "headline": headline,
        "verdicts": verdicts,
        "counts": counts,
        "sites": sites or None,
        "privacy_note": note,
    }
