"""Empirical privacy audit figures: claimed ε, audit lower bound, positive control.

Default: the built-in cohort's site-0 (as ``fedsynth simulate`` splits it), the
default run settings (ε = 3, 10 rounds × 45 local steps, q = 0.1, C = 1), 1000
canaries. Prints the claimed ε, the DP run's lower bound, the positive control's
(σ = 0) lower bound, the verdict and the runtime. ``--small-site`` instead audits a
60-row site trained 3 × 60 steps at q = 0.5 with ε = 1 (a quick check).

Run: ``python -m simulations.benchmarks.audit [--small-site] [--mode black-box]
[--canaries M] [--seed S]`` (default mode: white-box).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from shared.cohort import SCHEMA_PATH, generate_cohort
from simulations.audit.audit import MODES
from simulations.audit.report import AuditPlan, run_audit


def audit_figures(*, small_site: bool, canaries: int, seed: int, mode: str) -> dict[str, Any]:
    """Run one audit (with its positive control) in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="fedsynth-audit-bench-") as tmp:
        overrides: dict[str, Any] = {"seed": seed}
        data = schema = None
        if small_site:
            data, schema = Path(tmp) / "site.csv", SCHEMA_PATH
            generate_cohort(60, seed=seed + 1).to_csv(data, index=False)
            overrides |= {"epsilon": 1.0, "rounds": 3, "local-steps": 60, "sample-rate": 0.5}
        plan = AuditPlan(
            out=Path(tmp) / "out",
            data=data,
            schema=schema,
            overrides=overrides,
            canaries=canaries,
            mode=mode,
        )
        start = time.perf_counter()
        report = run_audit(plan)
        report["seconds"] = time.perf_counter() - start
    return report


def main() -> None:
    """Print the figures as a table and as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small-site", action="store_true")
    parser.add_argument("--canaries", type=int, help="default 1000 (100 with --small-site)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="white-box")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
    canaries = args.canaries or (100 if args.small_site else 1000)
    r = audit_figures(small_site=args.small_site, canaries=canaries, seed=args.seed, mode=args.mode)
    s = r["settings"]
    site = "built-in cohort, a generated 60-row site" if args.small_site else r["site"]
    print(f"mode: {r['mode']} ({r['method']})")
    print(f"site: {site}, {r['site_rows']} rows; {canaries} canaries, k+ = k- = {r['k_plus']}")
    print(
        f"training: {s['rounds']} rounds × {s['local_steps']} steps, q = {s['sample_rate']}, "
        f"C = {s['max_grad_norm']}, σ = {s['noise_multiplier']:.4f}"
    )
    print(f"  claimed ε (δ = {r['delta']:g})          {r['claimed_epsilon']:8.3f}")
    for run in r["runs"]:
        print(
            f"  {run['label'][:34]:34s}  lower bound {run['epsilon_lower_bound']:6.3f} "
            f"({run['correct']}/{run['guesses']} correct, {run['seconds']:.0f} s)"
        )
    print(f"  whole audit                      {r['seconds']:8.1f} s")
    print(r["verdict"])
    keys = ("claimed_epsilon", "audit_lower_bound", "positive_control_lower_bound", "k_plus")
    extra = {"seconds": r["seconds"], "canaries": canaries, "mode": r["mode"]}
    print(json.dumps({k: r[k] for k in keys} | extra))


if __name__ == "__main__":
    main()
