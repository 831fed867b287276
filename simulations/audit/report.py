"""Run a whole audit from a plan and write its JSON and markdown report."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from shared.accounting import epsilon_of
from shared.audit_bound import CITATION
from shared.cohort import cohort_schema, generate_cohort
from shared.config import RunSettings
from shared.device import select_device
from shared.errors import ConfigError
from shared.schema import Schema
from shared.tables import load_table, validate_frame
from simulations.audit.audit import (
    GUESS_MARGIN,
    AuditInputs,
    AuditOutcome,
    audit_run,
    guesses_per_side,
)
from simulations.audit.mechanism import Mechanism
from simulations.partition import DEFAULT_HOLDOUT, PartitionSpec, partition, split_holdout

log = logging.getLogger("fedsynth.audit")
NOT_CHARGED = (
    "The audit trains throwaway models on a copy of the rows; it opens no privacy ledger "
    "and charges no site's budget. Its models are discarded."
)

K_RULE = (
    f"k+ = k- fixed before training from m, δ and the claimed ε only: the fewest guesses "
    f"that, all correct, would certify {GUESS_MARGIN} × the claimed ε. Never tuned on the "
    "scores (sweeping k and reporting the best bound would be)."
)
SCORING = {
    "white-box": (
        "white-box with Dirac gradient canaries (Nasr et al., USENIX Security 2023; "
        "Steinke et al., Section 7): canary c is the gradient C·e_j on its own parameter "
        "coordinate j, Poisson-sampled at rate q at every DP-SGD step when its coin is in "
        "and added to the clipped sum before Opacus adds the noise; it scores "
        "s_c = (B/C)·Σ_t (g_t − ĝ_t)[j], g_t the step's released (clipped, noised, "
        "averaged) gradient and ĝ_t the site's rows' expected clipped gradient at θ_t "
        "(coin-independent). Valid because the accountant's ε covers every iterate and "
        "a canary is a record whose clipped gradient is C·e_j."
    ),
    "black-box": (
        "black-box with record canaries (schema-valid records uniform over the public "
        "ranges, joining the site's rows): the canary's loss under a reference model (the "
        "same training on the site's rows plus every canary, independent of the coins) "
        "minus its loss under the final trained model."
    ),
}
MECHANISM_NOTE = (
    "client.training.train_dp with the run's σ, C, q, learning rate, rounds × local steps "
    "and update clipping, this site alone in the federation (other sites' updates do not "
    "depend on its rows)."
)


@dataclass(frozen=True)
class AuditPlan:
    """Everything ``fedsynth audit`` needs.

    ``data`` is the audited site's table; ``None`` means the built-in cohort's
    first site as ``fedsynth simulate`` (default settings) would split it.
    ``overrides`` are run-config keys (as from :func:`shared.cli_options.run_overrides`).
    """

    out: Path
    data: Path | None
    schema: Path | None
    overrides: dict[str, Any]
    canaries: int = 1000
    positive_control: bool = True
    device: str = "cpu"
    builtin_sites: int = 3
    mode: str = "white-box"


def site_table(plan: AuditPlan, seed: int) -> tuple[pd.DataFrame, Schema, str]:
    """The audited site's rows, its schema, and a description of where they came from."""
    if plan.data is not None:
        if plan.schema is None:
            raise ConfigError(
                f"--data {plan.data} needs --schema (the consortium's public schema JSON)"
            )
        schema = Schema.load(plan.schema)
        return load_table(plan.data, schema), schema, str(plan.data)
    schema = cohort_schema()
    raw = generate_cohort(seed=seed + 7)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    # The same split as `fedsynth simulate` (its default holdout, then iid sites); site-0.
    _, train = split_holdout(frame, DEFAULT_HOLDOUT, seed=seed)
    site = partition(train, schema, PartitionSpec.parse("iid"), plan.builtin_sites, seed=seed)[0]
    return site, schema, f"built-in cohort, site-0 of {plan.builtin_sites} (iid, seed {seed})"


def verdict(claimed: float, dp: AuditOutcome, control: AuditOutcome | None) -> str:
    """The one-sentence conclusion printed in the report."""
    dp_part = (
        f"the DP run's lower bound {dp.epsilon_lower_bound:.3f} is at most the claimed "
        f"ε = {claimed:g} (consistent with the claim)"
        if dp.epsilon_lower_bound <= claimed
        else f"the DP run's lower bound {dp.epsilon_lower_bound:.3f} EXCEEDS the claimed "
        f"ε = {claimed:g}: the guarantee is violated (or a 5% false alarm); investigate"
    )
    if control is None:
        return (
            f"Audit strength NOT checked (no positive control was run); {dp_part}. "
            "Without a positive control this bound means nothing: rerun with --positive-control."
        )
    if control.epsilon_lower_bound > claimed:
        return (
            f"The audit is strong enough to test the claim (positive control's lower bound "
            f"{control.epsilon_lower_bound:.3f} > claimed ε = {claimed:g}); {dp_part}."
        )
    return (
        f"The audit is TOO WEAK to mean anything about the claimed ε = {claimed:g}: even "
        f"with no noise (σ = 0) its lower bound is only "
        f"{control.epsilon_lower_bound:.3f}. {dp_part[0].upper()}{dp_part[1:]}, but that "
        "says nothing about the guarantee."
    )


def run_audit(plan: AuditPlan) -> dict[str, Any]:
    """Run the audit (and the positive control) and write ``audit.json`` and ``audit.md``."""
    settings = RunSettings.from_run_config(
        {**plan.overrides, "schema-path": "<audit>", "out-dir": str(plan.out)}
    )
    site, schema, source = site_table(plan, settings.seed)
    if settings.delta * plan.canaries >= 0.05:
        log.warning(
            "δ·m = %g is large: the δ term alone weakens every bound; lower δ or m",
            settings.delta * plan.canaries,
        )
    inputs = AuditInputs.prepare(schema, settings, site, m=plan.canaries, seed=settings.seed)
    k = guesses_per_side(m=plan.canaries, claimed_epsilon=settings.epsilon, delta=settings.delta)
    device = select_device(plan.device)
    dp_mech = Mechanism.of_run(settings)
    with warnings.catch_warnings():
        # The CLI turns warnings on; Opacus's per-step hook notices carry no information.
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        dp = audit_run(inputs, dp_mech, k=k, device=device, mode=plan.mode)
        # White-box: σ = 0 with the run's clipping; black-box: σ = 0, clipping off.
        control_clip = settings.max_grad_norm if plan.mode == "white-box" else None
        control = (
            audit_run(
                inputs,
                Mechanism.positive_control(control_clip),
                k=k,
                device=device,
                mode=plan.mode,
            )
            if plan.positive_control
            else None
        )
    accounted = epsilon_of(
        [(dp_mech.noise_multiplier, settings.sample_rate, settings.planned_steps)],
        delta=settings.delta,
        accountant=settings.accountant,
    )
    report: dict[str, Any] = {
        "method": CITATION,
        "mode": plan.mode,
        "scoring": SCORING[plan.mode],
        "claimed_epsilon": settings.epsilon,
        "accounted_epsilon": accounted,
        "delta": settings.delta,
        "confidence": 0.95,
        "audit_lower_bound": dp.epsilon_lower_bound,
        "positive_control_lower_bound": control.epsilon_lower_bound if control else None,
        "canaries": plan.canaries,
        "canaries_included": int(inputs.included.sum()),
        "k_plus": k,
        "k_minus": k,
        "k_rule": K_RULE,
        "audited_mechanism": MECHANISM_NOTE,
        "site_rows": len(site),
        "site": source,
        "settings": {
            "rounds": settings.rounds,
            "local_steps": settings.local_steps,
            "sample_rate": settings.sample_rate,
            "max_grad_norm": settings.max_grad_norm,
            "noise_multiplier": dp_mech.noise_multiplier,
            "learning_rate": settings.learning_rate,
            "update_clip_norm": settings.update_clip_norm,
            "generator": settings.model.generator,
            "seed": settings.seed,
        },
        "runs": [asdict(r) for r in (dp, control) if r is not None],
        "verdict": verdict(settings.epsilon, dp, control),
        "ledger": NOT_CHARGED,
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "audit.json").write_text(json.dumps(report, indent=2))
    (plan.out / "audit.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    s = report["settings"]
    rows = "\n".join(
        f"| {r['label']} | {r['noise_multiplier']:.4g} | {r['max_grad_norm']:.4g} | "
        f"{r['correct']} / {r['guesses']} | **{r['epsilon_lower_bound']:.3f}** | "
        f"{r['seconds']:.0f} s |"
        for r in report["runs"]
    )
    return f"""# Empirical privacy audit

**Verdict.** {report["verdict"]}

| | |
|---|---|
| claimed ε (δ = {report["delta"]:g}) | {report["claimed_epsilon"]:g} (accountant: {report["accounted_epsilon"]:.3f}) |
| audit lower bound, 95% confidence | {report["audit_lower_bound"]:.3f} |
| positive-control lower bound | {_fmt(report["positive_control_lower_bound"])} |
| canaries m (included) | {report["canaries"]} ({report["canaries_included"]}) |
| guesses k₊ = k₋ | {report["k_plus"]} |
| audited site | {report["site"]}, {report["site_rows"]} rows |
| training | {s["rounds"]} rounds × {s["local_steps"]} steps, q = {s["sample_rate"]}, C = {s["max_grad_norm"]}, σ = {s["noise_multiplier"]:.4f}, lr = {s["learning_rate"]}, {s["generator"]} |

| run | σ | C | correct guesses | ε lower bound | time |
|---|---|---|---|---|---|
{rows}

**Method.** {report["method"]}. m canaries each join the run with probability 1/2 (a
secret coin); the site's own DP-SGD code trains R rounds × k steps with the included ones.
Canaries and scoring (mode `{report["mode"]}`): {report["scoring"]}
The k₊ highest scores are guessed "in", the k₋ lowest
"out"; k₊ = k₋ is fixed from m and the claimed ε before training. A lower bound is a
floor, never a guarantee: a bound far below the claimed ε is expected of a weak attack
and does not show that the true leakage is small.

**Budget.** {report["ledger"]}
"""


def _fmt(value: float | None) -> str:
    return "not run" if value is None else f"{value:.3f}"
