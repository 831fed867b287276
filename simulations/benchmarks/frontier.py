"""Privacy–utility frontier: TSTR AUC of each noise placement at the same ε per row.

On the built-in cohort (holdout 20 %), split over ``--sites`` Dirichlet(``--alpha``)
label-skewed sites, trains the same DP-VAE with

* ``local``: FedAvg of local DP-SGD (``--rounds`` × ``--local-steps``);
* ``distributed``: distributed DP-SGD under secure aggregation (``--steps``);
* ``pooled``: the trusted curator, DP-SGD on all training rows (``--steps``);

then samples as many rows as the training set and prints one table of TSTR AUC
(gradient boosting and logistic regression, tested on the holdout) next to TRTR.
Distributed and pooled use the same q and steps, so their σ differ only by the
rounding slack of the integer encoding.

Run: ``python -m simulations.benchmarks.frontier [--epsilon 1] [--steps 450] [--seeds 1]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.distdp.plan import DistributedPlan
from shared.distdp.step import parameter_count
from shared.evaluation.inputs import Limits
from shared.evaluation.utility import utility
from shared.models import build_generator
from shared.models.base import GeneratorFamily
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.partition import PartitionSpec, partition
from simulations.placement import train_distributed, train_local, train_pooled

LIMITS = Limits(importance_rows=200, importance_repeats=1)


def _split(
    seed: int, sites: int, alpha: float, rows: int
) -> tuple[Schema, pd.DataFrame, pd.DataFrame, list[pd.DataFrame]]:
    schema = cohort_schema()
    raw = generate_cohort(rows, seed=seed + 7)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    order = np.random.default_rng(seed).permutation(len(frame))
    n_hold = round(0.2 * len(frame))
    test, train = frame.iloc[order[:n_hold]], frame.iloc[order[n_hold:]].reset_index(drop=True)
    parts = partition(train, schema, PartitionSpec("dirichlet", alpha=alpha), sites, seed=seed)
    return schema, train, test, parts


def _aucs(
    schema: Schema, train: pd.DataFrame, test: pd.DataFrame, synth: pd.DataFrame, seed: int
) -> tuple[float, float, float]:
    res = utility(train, test, synth, schema, schema.roles["target"], LIMITS, seed)["models"]
    gb, lin = res["gradient_boosting"], res["linear"]
    return (
        gb["tstr"].get("auc", float("nan")),
        lin["tstr"].get("auc", float("nan")),
        gb["trtr"]["auc"],
    )


Row = tuple[str, int, float, float, float, float]


def _train(
    name: str,
    f: GeneratorFamily,
    args: argparse.Namespace,
    seed: int,
    sites: list[torch.Tensor],
    n_train: int,
) -> float:
    """Train ``f`` in place with placement ``name``; returns seconds per secure round (or NaN)."""
    if name == "local":
        train_local(
            f,
            sites,
            epsilon=args.epsilon,
            delta=args.delta,
            rounds=args.rounds,
            local_steps=args.local_steps,
            sample_rate=args.sample_rate,
            clip_norm=1.0,
            learning_rate=args.learning_rate,
            update_clip_norm=10.0,
            seed=seed,
        )
        return float("nan")
    if name == "distributed":
        plan = DistributedPlan(
            epsilon=args.epsilon,
            delta=args.delta,
            steps=args.steps,
            sample_rate=args.sample_rate,
            clip_norm=1.0,
            learning_rate=args.learning_rate,
            # Public: q times the consortium's announced total row count.
            expected_batch=args.sample_rate * n_train,
            noise_sites=len(sites),
            threshold=len(sites) // 2 + 1,
        )
        cost = train_distributed(f, sites, plan, seed=seed)
        if seed == args.first_seed:
            print(plan.privacy_statement(dim=parameter_count(f.private_module())))
        print(f"  distributed: {cost}")
        return cost.total_s
    train_pooled(
        f,
        torch.cat(sites),
        epsilon=args.epsilon,
        delta=args.delta,
        steps=args.steps,
        sample_rate=args.sample_rate,
        clip_norm=1.0,
        learning_rate=args.learning_rate,
        seed=seed,
    )
    return float("nan")


def _run_seed(args: argparse.Namespace, seed: int) -> list[Row]:
    schema, train, test, parts = _split(seed, args.sites, args.alpha, args.rows)
    settings = ModelSettings()
    sites = [torch.from_numpy(build_generator(schema, settings).encode(p)) for p in parts]
    rows: list[Row] = []
    trtr = float("nan")
    for name in ("local", "distributed", "pooled"):
        torch.manual_seed(seed)
        f = build_generator(schema, settings)
        t0 = time.perf_counter()
        per_round = _train(name, f, args, seed, sites, len(train))
        seconds = time.perf_counter() - t0
        gb, lin, trtr = _aucs(schema, train, test, f.sample(len(train), seed=seed), seed)
        rows.append((name, seed, gb, lin, seconds, per_round))
        print(f"seed {seed} {name}: TSTR AUC gb {gb:.3f} linear {lin:.3f} ({seconds:.0f}s)")
    rows.append(("TRTR", seed, trtr, float("nan"), 0.0, float("nan")))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the frontier and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, default=1.0, help="ε per row (per site)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--rows", type=int, default=9000, help="cohort rows (simulate's default)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    p.add_argument("--steps", type=int, default=450, help="steps of pooled and distributed")
    p.add_argument("--sample-rate", type=float, default=0.11)
    p.add_argument("--rounds", type=int, default=50, help="local: FedAvg rounds")
    p.add_argument("--local-steps", type=int, default=9, help="local: steps per round")
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, default=1, help="repeat over this many seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on")
    args = p.parse_args(argv)
    rows: list[tuple[str, int, float, float, float, float]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows.extend(_run_seed(args, seed))
    table = pd.DataFrame(
        rows,
        columns=["placement", "seed", "tstr_auc_gb", "tstr_auc_linear", "train_s", "s_per_round"],
    )
    summary = table.groupby("placement", sort=False)[
        ["tstr_auc_gb", "tstr_auc_linear", "train_s"]
    ].mean()
    print(
        f"\nε = {args.epsilon} per row, δ = {args.delta}, {args.sites} sites Dirichlet({args.alpha}), built-in cohort, {args.seeds} seed(s)"
    )
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
