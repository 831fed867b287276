"""The self-contained ``report.html``: summary first, then one section per check.

The page has no scripts and no external resources: styles are inline and
figures are ``data:image/png;base64`` URIs, and a Content-Security-Policy meta
tag forbids the browser from fetching anything else, so the file opens offline
and can be attached to an e-mail as it is. Every value from the result is
HTML-escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#222;line-height:1.4;padding:0 1em}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
font-size:.9em;text-align:left}th{background:#f3f3f3}
.good{background:#d9f2d9}.fair{background:#fff2cc}.poor{background:#f8d0d0}
.not-run{background:#eee}.muted{color:#666;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or 0 < abs(value) < 1e-3
            else (f"{value:.{digits}f}")
        )
    return escape(str(value))


def _table(head: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _pairs(mapping: dict[str, Any]) -> str:
    """``{"a": 1, "b": {"c": 2}}`` as ``a 1, b (c 2)`` for running text."""
    parts = []
    for key, value in mapping.items():
        shown = f"({_pairs(value)})" if isinstance(value, dict) else str(value)
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return ", ".join(parts)


def _p(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{escape(text)}</p>"


def _figure(fig: dict[str, str]) -> str:
    return (
        f'<figure id="fig-{escape(fig["id"])}"><img alt="{escape(fig["title"])}" '
        f'src="data:image/png;base64,{fig["png"]}"><figcaption class="muted">'
        f"{escape(fig['title'])}</figcaption></figure>"
    )


def _summary(s: dict[str, Any]) -> str:
    rows = [
        [v["aspect"], v["verdict"], v["value_text"], v["measures"], v["rule"]]
        for v in s["verdicts"]
    ]
    classes = [v["verdict"].replace(" ", "-") for v in s["verdicts"]]
    out = [
        "<h2>Summary</h2>",
        _p(f"Verdicts: {s['headline']}"),
        _table(["aspect", "verdict", "value", "what is measured", "rule"], rows, classes),
        "<h3>Privacy budget per site</h3>",
    ]
    if s["sites"]:
        site_rows = [
            [x["site"], x["epsilon"], f"{x['delta']:.1e}", x["accountant"]] for x in s["sites"]
        ]
        out.append(_table(["site", "ε (cumulative)", "δ", "accountant"], site_rows))
    out.append(_p(s["privacy_note"]))
    return "".join(out)


def _fidelity(fid: dict[str, Any]) -> str:
    marg = fid["marginals"]
    rows = [
        [
            name,
            c["kind"],
            c.get("ks"),
            c.get("wasserstein_normalised"),
            c.get("tvd"),
            c["missing_real"],
            c["missing_synthetic"],
        ]
        for name, c in marg["columns"].items()
    ]
    a, mi, det = fid["associations"], fid["mutual_information"], fid["detection"]
    pairs = [
        [
            "association (r, V, η)",
            a["abs_diff_mean"],
            a["abs_diff_max"],
            " × ".join(a["worst_pair"] or []),
        ],
        [
            "mutual information (nats)",
            mi["abs_diff_mean"],
            mi["abs_diff_max"],
            " × ".join(mi["worst_pair"] or []),
        ],
    ]
    return "".join(
        [
            "<h2>Fidelity</h2>",
            _p(
                f"Mean KS {_fmt(marg['ks_mean'])}, mean normalised Wasserstein "
                f"{_fmt(marg['wasserstein_normalised_mean'])}, mean TVD {_fmt(marg['tvd_mean'])}."
            ),
            _table(
                [
                    "column",
                    "type",
                    "KS",
                    "Wasserstein / range",
                    "TVD",
                    "missing real",
                    "missing synthetic",
                ],
                rows,
            ),
            _p(marg["method"], "muted"),
            _table(["pairwise dependence", "mean |diff|", "max |diff|", "worst pair"], pairs),
            _p(a["method"] + ". " + mi["method"], "muted"),
            _p(
                f"Detection AUC {_fmt(det['auc'])} on {det['rows_per_table']} rows per table. "
                + det["method"]
            ),
        ]
    )


def _utility(u: dict[str, Any]) -> str:
    if u.get("status") == "skipped":
        return "<h2>Utility</h2>" + _p(u["reason"])
    metrics = ["auc", "accuracy", "f1"] if u["task"] == "classification" else ["r2", "mae"]
    rows = []
    for family, m in u["models"].items():
        for mode in ("trtr", "tstr"):
            scores = m[mode]
            rows.append(
                [
                    f"{family} ({m['model']})",
                    mode.upper(),
                    *[scores.get(k) for k in metrics],
                    m.get("importance_spearman"),
                    m.get("importance_weighted_tau"),
                ]
            )
    return "".join(
        [
            "<h2>Utility</h2>",
            _p(
                f"Target {u['target']!r} ({u['task']}); TRTR trained on {u['train_source']}. "
                f"Rows: {_pairs(u['rows'])}."
            ),
            _table(
                ["model", "trained on", *metrics, "importance Spearman", "importance weighted τ"],
                rows,
            ),
            _p(u["importance_method"], "muted"),
        ]
    )


def _privacy(p: dict[str, Any]) -> str:
    if p.get("status") == "skipped":
        return "<h2>Privacy of the released table</h2>" + _p(p["reason"])
    em, d, nn, mia = p["exact_match"], p["dcr"], p["nndr"], p["membership_inference"]
    rows = [
        ["exact-match rate", em["train_rate"], em["holdout_rate"]],
        [
            "exact-match rate (equal-size samples)",
            em["train_rate_size_matched"],
            em["holdout_rate_size_matched"],
        ],
        ["median distance to closest record", d["median_to_train"], d["median_to_holdout"]],
        ["5th percentile distance", d["p05_to_train"], d["p05_to_holdout"]],
        ["median NNDR", nn["median_to_train"], nn["median_to_holdout"]],
    ]
    return "".join(
        [
            "<h2>Privacy of the released table</h2>",
            _table(["measure", "against train", "against holdout (baseline)"], rows),
            _p(
                f"DCR share closer to train: {_fmt(d['share_closer_to_train'])} (method: {d['method']})."
            ),
            _p(
                f"Membership inference: AUC {_fmt(mia['auc'])}, TPR at 1% FPR "
                f"{_fmt(mia['tpr_at_fpr_0.01'])}, advantage {_fmt(mia['advantage'])}. "
                f"Method: {mia['method']}."
            ),
            _p(f"Sizes: {_pairs(p['sizes'])}. Distance: {p['distance']}.", "muted"),
            _p(
                "These attacks measure this table only; passing them does not prove privacy "
                "(the DP guarantee does): outliers can stay exposed to stronger attacks (Stadler "
                "et al., USENIX Security 2022; Ganev & De Cristofaro, 2023). Failing them is "
                "strong evidence of leakage.",
                "muted",
            ),
        ]
    )


def _causal(c: dict[str, Any]) -> str:
    if c.get("status") == "skipped":
        return "<h2>Causal validity</h2>" + _p(c["reason"])
    keys = [
        "ate",
        "ci_low",
        "ci_high",
        "naive_difference",
        "treated_share",
        "rows",
        "propensity_clipped_rows",
    ]
    rows = []
    for side in ("real", "synthetic"):
        est = c[side]
        if est["status"] == "ok":
            rows.append([side, *[est[k] for k in keys]])
        else:
            rows.append([side, f"not estimable: {est['reason']}", *[None] * (len(keys) - 1)])
    extra = ""
    if "difference" in c:
        extra = _p(
            f"Difference (synthetic − real) {_fmt(c['difference'])}; CIs overlap: "
            f"{_fmt(c['ci_overlap'])}; synthetic ATE inside real CI: "
            f"{_fmt(c['synthetic_within_real_ci'])}; propensity KS {_fmt(c['propensity_ks'])}."
        )
    return "".join(
        [
            "<h2>Causal validity</h2>",
            _p(
                f"Effect of {c['treatment']} = {c['treated_category']!r} on {c['outcome']}, "
                f"adjusting for {', '.join(c['covariates'])}."
            ),
            _table(
                [
                    "table",
                    "ATE",
                    "CI low",
                    "CI high",
                    "naive difference",
                    "treated share",
                    "rows",
                    "clipped propensities",
                ],
                rows,
            ),
            extra,
            _p(c["method"], "muted"),
        ]
    )


def render(result: dict[str, Any], figures: list[dict[str, str]]) -> str:
    """The complete HTML document for ``result`` with ``figures`` embedded.

    Parameters
    ----------
    result : dict
        JSON-ready evaluation result (see :func:`shared.evaluation.api.evaluate`).
    figures : list of dict
        ``{"id", "title", "png"}`` from :func:`shared.evaluation.plots.render_all`.
    """
    figs = {f["id"]: _figure(f) for f in figures}
    inputs = result["inputs"]
    body = [
        "<h1>Synthetic data evaluation</h1>",
        _p(
            f"Schema {inputs['schema']!r}; real (holdout) {inputs['real_rows']} rows, synthetic "
            f"{inputs['synthetic_rows']} rows, train {inputs['train_rows'] or 'not given'}; "
            f"seed {result['seed']}.",
            "muted",
        ),
        _summary(result["summary"]),
        _fidelity(result["fidelity"]),
        figs.get("distributions", ""),
        figs.get("associations", ""),
        _utility(result["utility"]),
        figs.get("utility", ""),
        _privacy(result["privacy"]),
        figs.get("dcr", ""),
        _causal(result["causal"]),
        figs.get("ate", ""),
        "<h2>Notes</h2>",
        _p(result["note"], "muted"),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fedsynth evaluation</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
