"""Causal validity of the staged generator against the non-staged default (issue #7).

For the built-in cohort (known true effect, :data:`shared.cohort.TRUE_ATE`) and
for NHEFS (quitting smoking → weight gain, loaded offline from ``causaldata``),
the table is dealt into ``--sites`` sites (``--partition``, IID by default) and
each generator is trained federated with the *client's own round function*
(``client.site.run_site_round``: schema check, ledger budget check, DP-SGD with
Opacus, ledger record, update clipping) and the *server's aggregation*
(``server.strategy.mean_update``), in one process instead of Flower's
simulation engine (five Ray workers do not fit two shared cores). σ is
calibrated so that ``rounds × local_steps`` steps spend ε at each site
(RDP, δ = 1e-5); each site's ledger then reports what it spent.

The doubly robust (AIPW) ATE and its bootstrap 95% interval
(``shared.evaluation.causal``) are estimated on the real rows (all of them:
they are what the sites hold) and on as many synthetic rows. Acceptance, per
generator: the synthetic ATE is within 15% of the reference effect (the true
effect for the cohort, the real-data AIPW estimate for NHEFS, which has no
known truth) AND its interval overlaps the real-data interval; requiring both
is at least as strict as the stricter of the two.

``resampled`` (in ``--generators``) is the ceiling, not a generator: the
"synthetic" table is the real rows drawn with replacement, what a generator that
learnt the table exactly would give. Its pass rate over seeds is the most any
generator can reach at that many synthetic rows, because the synthetic AIPW has
its own sampling error. For ``staged`` with the effect calibration the DP
estimate ψ the sites released is recorded next to the synthetic ATE, so the
two sources of error (the mechanism, the synthetic table's sampling) separate.
The run ends with a summary: per data set and generator, mean ± SD of the
synthetic ATE (and of ψ) and the passing seeds.

No privacy attack is run on NHEFS (NCHS terms forbid attempts at
re-identification); the cohort is simulated, public data.

Run: ``python -m simulations.benchmarks.causal [--sites 5 --epsilon 3 --seeds 0]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from client.effect import exact_sums, release_sums
from client.settings import SiteSettings
from client.site import run_site_round
from server.effect import apply_effect, effect_request
from server.strategy import mean_update
from shared.cohort import TRUE_ATE, cohort_schema, generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.effect import effect_length
from shared.evaluation.association import associations
from shared.evaluation.causal import causal
from shared.evaluation.fidelity import marginals
from shared.evaluation.inputs import Limits
from shared.evaluation.utility import utility
from shared.models import GeneratorFamily, build_generator
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.benchmarks.causal_report import report, report_summary, summarise
from simulations.nhefs import load_nhefs
from simulations.partition import PartitionSpec, partition

TOLERANCE = 0.15
GENERATORS = ("staged", "dp-vae")
#: Not a generator: the real rows resampled with replacement (the ceiling).
RESAMPLED = "resampled"


@dataclass(frozen=True)
class Dataset:
    """A table, its schema, and the reference effect the synthetic ATE is judged against."""

    name: str
    frame: pd.DataFrame
    schema: Schema
    true_ate: float | None


def datasets(names: list[str]) -> list[Dataset]:
    """The requested benchmark tables (``cohort``, ``nhefs``)."""
    out = []
    for name in names:
        if name == "cohort":
            schema = cohort_schema()
            raw = generate_cohort(9000, seed=7)
            frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
            out.append(Dataset("cohort", frame, schema, TRUE_ATE))
        elif name == "nhefs":
            frame, schema = load_nhefs()
            out.append(Dataset("nhefs", frame, schema, None))
        else:
            raise SystemExit(f"unknown data set {name!r}; choose cohort or nhefs")
    return out


def train_federated(
    data: Dataset, run: RunSettings, parts: list[pd.DataFrame], work: Path, seed: int
) -> tuple[GeneratorFamily, list[float], float | None]:
    """Federated DP training through the client's round function.

    Returns the model, each site's cumulative ε and, when the effect calibration
    ran, the released estimate ψ in the outcome's units (else ``None``).
    """
    schema_path = work / "schema.json"
    data.schema.save(schema_path)
    sites = []
    for i, part in enumerate(parts):
        folder = work / f"site-{i}"
        (folder / "state").mkdir(parents=True, exist_ok=True)
        part.to_csv(folder / "data.csv", index=False)
        sites.append(
            SiteSettings(
                site_name=f"site-{i}",
                data_path=folder / "data.csv",
                schema_path=schema_path,
                state_dir=folder / "state",
                budget_epsilon=run.epsilon,
                budget_delta=run.delta,
                device="cpu",
                simulation_seed=seed,
            )
        )
    torch.manual_seed(seed)
    family = build_generator(data.schema, run.model)
    state = family.state_dict()
    sigma = run.noise_multiplier()
    for rnd in range(1, run.rounds + 1):
        train = run.train_settings(
            rnd, noise_multiplier=sigma, schema_fingerprint=data.schema.fingerprint()
        )
        updates, spent = [], []
        for site in sites:
            result = run_site_round(site, train, state, run=f"bench-{seed}")
            if not result.trained or result.update is None:
                raise SystemExit(f"{site.site_name} declined round {rnd}: {result.reason}")
            updates.append(result.update)
            spent.append(result.epsilon)  # cumulative, from the site's ledger
        mean = mean_update(updates)
        state = {k: state[k] + mean[k] for k in state}
    family.load_state_dict(state)
    if not run.calibrates_effect:
        return family, spent, None
    spent, psi = calibrate_federated(family, run, sites, state, seed)
    return family, spent, psi


def calibrate_federated(
    family: GeneratorFamily,
    run: RunSettings,
    sites: list[SiteSettings],
    state: dict[str, torch.Tensor],
    seed: int,
) -> tuple[list[float], float]:
    """The effect calibration through the client's and the server's own functions.

    Returns each site's cumulative ε and the released estimate ψ (outcome units).
    """
    request = effect_request(family, run)
    total, spent = np.zeros(effect_length(request.arms)), []
    for site in sites:
        result = release_sums(site, request, exact_sums(site, request, state), run=f"bench-{seed}")
        if not result.sent or result.noisy is None:
            raise SystemExit(f"{site.site_name} declined the effect calibration: {result.reason}")
        total = total + result.noisy
        spent.append(result.epsilon)
    info = apply_effect(family, total, run, [s.site_name for s in sites])
    return spent, float(info["estimate"][0])


def verdict(real: dict[str, Any], syn: dict[str, Any], reference: float) -> dict[str, Any]:
    """Acceptance of one synthetic estimate (both criteria must hold)."""
    if syn.get("status") != "ok":
        return {"within_15pct": False, "ci_overlap": False, "pass": False}
    within = abs(syn["ate"] - reference) <= TOLERANCE * abs(reference)
    overlap = syn["ci_low"] <= real["ci_high"] and real["ci_low"] <= syn["ci_high"]
    return {"within_15pct": within, "ci_overlap": overlap, "pass": within and overlap}


def synthesize(
    data: Dataset, gen: str, args: argparse.Namespace, parts: list[pd.DataFrame], seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One generator's synthetic table, and the facts of how it was made.

    ``resampled`` draws the real rows with replacement (no training, no DP): the
    ceiling any generator can reach at this many synthetic rows.
    """
    rows = args.synthetic_rows or len(data.frame)
    if gen == RESAMPLED:
        drawn = data.frame.sample(n=rows, replace=True, random_state=seed)
        return drawn.reset_index(drop=True), {"sigma": None, "site_epsilon_max": None}
    run = RunSettings(
        rounds=args.rounds,
        local_steps=args.local_steps,
        epsilon=args.epsilon,
        sample_rate=args.sample_rate,
        learning_rate=args.learning_rate,
        effect_budget_fraction=args.effect_budget_fraction,
        seed=seed,
        model=ModelSettings(generator=gen, propensity_weight=args.propensity_weight),
    )
    with tempfile.TemporaryDirectory(prefix="fedsynth-causal-") as tmp:
        family, spent, psi = train_federated(data, run, parts, Path(tmp), seed)
    facts = {"sigma": run.noise_multiplier(), "site_epsilon_max": max(spent)}
    if psi is not None:
        facts["effect_estimate"] = psi
    return family.sample(rows, seed=seed), facts


def run_dataset(data: Dataset, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train every generator on one data set and compare their ATEs with the real one."""
    roles = data.schema.roles
    parts = partition(data.frame, data.schema, PartitionSpec.parse(args.partition), args.sites)
    limits = Limits(bootstrap_resamples=args.bootstrap)
    doc: dict[str, Any] = {"data": data.name, "seed": seed, "site_rows": [len(p) for p in parts]}
    doc["true_ate"] = data.true_ate
    for gen in args.generators.split(","):
        synthetic, facts = synthesize(data, gen, args, parts, seed)
        res = causal(
            data.frame,
            synthetic,
            data.schema,
            roles["treatment"],
            roles["outcome"],
            target=roles.get("target"),
            limits=limits,
            seed=seed,
        )
        real = res["real"]
        doc["real"] = {k: real.get(k) for k in ("ate", "ci_low", "ci_high")}
        reference = data.true_ate if data.true_ate is not None else real["ate"]
        syn = res["synthetic"]
        doc[gen] = {
            **{k: syn.get(k) for k in ("status", "ate", "ci_low", "ci_high", "treated_share")},
            "propensity_ks": res.get("propensity_ks"),
            **facts,
            **verdict(real, syn, reference),
            **quality(data, synthetic, limits, seed),
        }
        if gen == RESAMPLED:  # TSTR would test on the very rows it trained on
            doc[gen]["tstr_auc"] = None
    return doc


def quality(
    data: Dataset, synthetic: pd.DataFrame, limits: Limits, seed: int
) -> dict[str, float | None]:
    """Fidelity and utility next to causal validity (real rows as the reference).

    Utility is train-on-synthetic, test-on-real (gradient boosting, AUC) for the
    schema's target, tested on the real rows themselves (the benchmark keeps no
    holdout); it compares the generators with each other, not with TRTR.
    """
    fid = marginals(data.frame, synthetic, data.schema)
    out: dict[str, float | None] = {
        "ks_mean": fid["ks_mean"],
        "tvd_mean": fid["tvd_mean"],
        "assoc_diff_mean": associations(data.frame, synthetic, data.schema)["abs_diff_mean"],
        "tstr_auc": None,
    }
    target = data.schema.roles.get("target")
    if target:
        res = utility(data.frame, data.frame, synthetic, data.schema, target, limits, seed)
        out["tstr_auc"] = res["models"]["gradient_boosting"]["tstr"]["auc"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run every (data set, seed), print blocks and a JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="cohort,nhefs", help="comma list of cohort, nhefs")
    ap.add_argument(
        "--generators",
        default=",".join(GENERATORS),
        help=f"comma list of generator families, and {RESAMPLED!r} (the real rows resampled)",
    )
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--partition", default="iid", help="iid, dirichlet:A or column:NAME")
    ap.add_argument("--epsilon", type=float, default=3.0, help="ε per site (δ = 1e-5)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=45)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument(
        "--learning-rate", type=float, default=RunSettings().learning_rate, help="local Adam lr"
    )
    ap.add_argument(
        "--effect-budget-fraction",
        type=float,
        default=RunSettings().effect_budget_fraction,
        help="staged: share of ε for the DP effect calibration (0: none)",
    )
    ap.add_argument(
        "--propensity-weight",
        type=float,
        default=ModelSettings().propensity_weight,
        help="staged: weight of the propensity head's loss",
    )
    ap.add_argument(
        "--synthetic-rows", type=int, default=0, help="rows sampled (default: as many as real)"
    )
    ap.add_argument("--seeds", default="0", help="comma list of seeds")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    ap.add_argument("--json", default="", help="also write the JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # Each fresh site's ledger warns that it starts empty: expected here.
    logging.getLogger("fedsynth").setLevel(logging.ERROR)
    generators = args.generators.split(",")
    docs = []
    for data in datasets(args.data.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            doc = run_dataset(data, args, seed)
            report(doc, generators)
            sys.stdout.flush()
            docs.append(doc)
    summary = summarise(docs, generators)
    text = json.dumps(
        {"settings": vars(args), "results": docs, "summary": summary}, indent=1, default=str
    )
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    report_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
