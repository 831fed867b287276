"""Release-family placements on one fixed split, with only the release noise varying.

The frontier's seeds change the holdout, the Dirichlet split and the noise at
once, so its seed-paired differences mix all three. This benchmark holds the
split fixed (frontier seed 0, 5 Dirichlet(0.5) sites) and repeats each placement's
fit with ``--draws`` noise seeds. ``distributed`` adds exactly the curator's noise
in distribution, so its TSTR AUC should match ``pooled-dp`` within the printed
error, while ``local`` carries √K times the noise.

Run::

    PYTHONPATH=. .venv/bin/python -m simulations.benchmarks.release_placements --table cohort
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shared.config import ModelSettings
from shared.models import build_generator
from shared.models.release import ReleaseFamily, stage_noise_multipliers
from shared.schema import Schema
from simulations.benchmarks import frontier_grid as grid
from simulations.benchmarks.frontier_cells import make_split
from simulations.benchmarks.frontier_tables import load_bench_table
from simulations.placement_release import (
    distributed_total,
    fit_placement,
    local_total,
    release_sigma,
)

PLACEMENTS = ("pooled-dp", "distributed", "local")


def _family(schema: Schema, name: str) -> ReleaseFamily:
    fam = build_generator(schema, ModelSettings(generator=name))
    if not isinstance(fam, ReleaseFamily):
        raise SystemExit(f"{name!r} is not a release family (try dp-marginal)")
    return fam


def main(argv: list[str] | None = None) -> None:
    """Print the stage-0 noise std and the TSTR AUC per placement, mean ± standard error."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="cohort")
    p.add_argument("--rows", type=int, default=9000)
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--draws", type=int, default=16, help="noise seeds per placement")
    p.add_argument("--family", default="dp-marginal")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    bench = load_bench_table(args.table, max_rows=args.rows, seed=0)
    fam = _family(bench.schema, args.family)
    split = make_split(bench, 0, 0.5, [args.sites])
    parts = {"pooled-dp": [split.train], "distributed": split.sites[args.sites]}
    parts["local"] = split.sites[args.sites]
    sigma = stage_noise_multipliers(
        release_sigma(epsilon=args.epsilon, delta=1e-5), fam.release_shares()
    )[0]
    exact = fam.statistics(fam.encode(split.train), 0)
    encoded = [fam.encode(s) for s in split.sites[args.sites]]
    noise = {
        "pooled-dp": [
            local_total(fam, [fam.encode(split.train)], stage=0, noise_multiplier=sigma, seed=d)
            - exact
            for d in range(4)
        ],
        "distributed": [
            distributed_total(fam, encoded, stage=0, noise_multiplier=sigma, seed=d) - exact
            for d in range(4)
        ],
    }
    print(f"stage 0: σ_sΔ_s = {sigma * fam.release_sensitivity(0):.2f}")
    for name, draws in noise.items():
        print(f"  {name}: noise std per cell {np.std(draws):.2f} over {len(draws)} draws")
    auc: dict[str, list[float]] = {name: [] for name in PLACEMENTS}
    for draw in range(args.draws):
        for name in PLACEMENTS:
            fam = _family(bench.schema, args.family)
            rows = [fam.encode(part) for part in parts[name]]
            fit_placement(fam, name, rows, epsilon=args.epsilon, delta=1e-5, seed=draw)
            synth = fam.sample(len(split.train), seed=draw)
            scores = grid.auc_scores(
                split.train, split.holdout, synth, bench.schema, bench.target, 0
            )
            auc[name].append(scores["auc_gb"])

    def stat(v: np.ndarray) -> str:
        return f"{v.mean():.4f} ± {v.std(ddof=1) / np.sqrt(len(v)):.4f}"

    print(f"TSTR AUC gb over {args.draws} noise draws ({args.table}, {args.sites} sites):")
    for name, values in auc.items():
        print(f"  {name}: {stat(np.array(values))}")
    for name in ("distributed", "local"):
        diff = np.array(auc[name]) - np.array(auc["pooled-dp"])
        print(f"  {name} − pooled-dp (paired): {stat(diff)}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
