"""Non-IID robustness: TSTR AUC of each server aggregation choice at ε = 1 per site.

On the built-in cohort (public, synthetic; holdout 20 %), split over ``--sites``
sites by each ``--partitions`` spec (IID, unequal IID site sizes, Dirichlet label
skew), trains the default DP-VAE with each ``--aggregations`` choice and prints
gradient-boosting TSTR AUC on the holdout, mean ± std over ``--seeds`` seeds,
next to TRTR.

Trainer: the in-process loop :func:`simulations.placement.train_local`, i.e. the
sites' own DP-SGD code (:func:`client.training.train_dp`, with FedProx's proximal
term), the server's update clipping, mean and optimiser (:mod:`server.optimisers`),
at the same σ, q, C, rounds and steps as ``fedsynth simulate``'s defaults; without
Flower's processes, ledgers or secure aggregation (which changes the mean by at
most its quantisation error).

Every setting here (server learning rates, β, μ) is tuned on this public cohort
only, never on a site's rows.

Run: ``python -m simulations.benchmarks.aggregation [--seeds 2] [--partitions iid ...]``
(default: 1 seed, about 5 minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from shared.cohort import cohort_schema, generate_cohort
from shared.config import AGGREGATIONS, AggregationSettings, RunSettings
from shared.errors import ConfigError
from shared.evaluation.inputs import Limits
from shared.evaluation.utility import utility
from shared.models import build_generator
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.partition import DEFAULT_HOLDOUT, PartitionSpec, partition, split_holdout
from simulations.placement import train_local

LIMITS = Limits(importance_rows=100, importance_repeats=1)
PARTITIONS = ("iid", "unequal", "dirichlet:0.5", "dirichlet:0.1")


def _cohort(rows: int, seed: int) -> tuple[Schema, pd.DataFrame, pd.DataFrame]:
    schema = cohort_schema()
    raw = generate_cohort(rows, seed=seed + 7)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    test, train = split_holdout(frame, DEFAULT_HOLDOUT, seed=seed)
    return schema, train, test


def _gb_auc(
    schema: Schema, train: pd.DataFrame, test: pd.DataFrame, synth: pd.DataFrame, seed: int
) -> tuple[float, float]:
    """(TSTR, TRTR) AUC of gradient boosting on the holdout."""
    res = utility(train, test, synth, schema, schema.roles["target"], LIMITS, seed)
    gb = res["models"]["gradient_boosting"]
    return float(gb["tstr"].get("auc") or float("nan")), float(gb["trtr"]["auc"])


def split_sites(
    train: pd.DataFrame, schema: Schema, spec: str, sites: int, seed: int
) -> list[pd.DataFrame]:
    """``partition``; a draw that leaves a site under the minimum is redrawn (next seed)."""
    for attempt in range(50):
        try:
            return partition(
                train, schema, PartitionSpec.parse(spec), sites, seed=seed + 1000 * attempt
            )
        except ConfigError:
            # Dirichlet(0.1) over 5 sites often leaves a site (almost) empty.
            continue
    raise ConfigError(f"{spec}: no draw in 50 gave every one of {sites} sites enough rows")


def run_one(
    schema: Schema,
    sites: list[torch.Tensor],
    run: RunSettings,
    agg: AggregationSettings,
    *,
    n_synth: int,
    seed: int,
) -> pd.DataFrame:
    """Train with ``agg`` from a seeded initial model; return ``n_synth`` synthetic rows."""
    torch.manual_seed(seed)
    family = build_generator(schema, run.model)
    train_local(
        family,
        sites,
        epsilon=run.epsilon,
        delta=run.delta,
        rounds=run.rounds,
        local_steps=run.local_steps,
        sample_rate=run.sample_rate,
        clip_norm=run.max_grad_norm,
        learning_rate=run.learning_rate,
        update_clip_norm=run.update_clip_norm,
        seed=seed,
        aggregation=agg,
    )
    return family.sample(n_synth, seed=seed)


def _settings(args: argparse.Namespace) -> tuple[RunSettings, dict[str, AggregationSettings]]:
    run = replace(
        RunSettings(),
        epsilon=args.epsilon,
        rounds=args.rounds,
        local_steps=args.local_steps,
    )
    base = AggregationSettings(
        server_momentum=args.server_momentum,
        server_beta2=args.server_beta2,
        server_tau=args.server_tau,
        proximal_mu=args.proximal_mu,
    )
    lrs = dict(
        zip(args.aggregations, args.server_lr or [0.0] * len(args.aggregations), strict=True)
    )
    return run, {
        a: replace(base, aggregation=a, server_learning_rate=lrs[a]) for a in args.aggregations
    }


def main(argv: list[str] | None = None) -> int:
    """Run every partition × aggregation × seed and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, default=1.0, help="ε per row at each site")
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--rows", type=int, default=9000, help="cohort rows (simulate's default)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=RunSettings().rounds)
    p.add_argument("--local-steps", type=int, default=RunSettings().local_steps)
    p.add_argument("--partitions", nargs="+", default=list(PARTITIONS))
    p.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS), choices=AGGREGATIONS)
    p.add_argument(
        "--server-lr",
        type=float,
        nargs="+",
        help="η per aggregation, in --aggregations order (default: each one's default)",
    )
    d = AggregationSettings()
    p.add_argument("--server-momentum", type=float, default=d.server_momentum)
    p.add_argument("--server-beta2", type=float, default=d.server_beta2)
    p.add_argument("--server-tau", type=float, default=d.server_tau)
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu)
    args = p.parse_args(argv)
    # One thread: runs split across processes would otherwise oversubscribe the cores
    # (measured: 4 s per run against 100–270 s for two such processes on 2 cores).
    torch.set_num_threads(1)
    run, aggs = _settings(args)
    rows: list[tuple[str, str, int, float, float]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        schema, train, test = _cohort(args.rows, seed)
        for spec in args.partitions:
            parts = split_sites(train, schema, spec, args.sites, seed)
            family = build_generator(schema, run.model)
            sites = [torch.from_numpy(family.encode(part)) for part in parts]
            trtr = float("nan")
            for name, agg in aggs.items():
                t0 = time.perf_counter()
                synth = run_one(schema, sites, run, agg, n_synth=len(train), seed=seed)
                seconds = time.perf_counter() - t0
                tstr, trtr = _gb_auc(schema, train, test, synth, seed)
                rows.append((spec, name, seed, tstr, seconds))
                print(
                    f"seed {seed} {spec:14s} {name:8s} TSTR AUC {tstr:.3f} ({seconds:.0f}s)",
                    flush=True,
                )
            rows.append((spec, "TRTR", seed, trtr, 0.0))
    table = pd.DataFrame(rows, columns=["partition", "aggregation", "seed", "auc", "seconds"])
    summary = table.pivot_table(
        index="aggregation", columns="partition", values="auc", aggfunc=["mean", "std"]
    )
    cells = summary["mean"].map(lambda v: f"{v:.3f}")
    if args.seeds > 1:
        cells = cells + summary["std"].map(lambda v: f" ± {v:.3f}" if np.isfinite(v) else "")
    order = [a for a in [*aggs, "TRTR"] if a in cells.index]
    print(
        f"\nTSTR AUC (gradient boosting, holdout), ε = {args.epsilon} per site, {args.sites} "
        f"sites, {run.rounds} rounds × {run.local_steps} steps, built-in cohort "
        f"({args.rows} rows), {args.seeds} seed(s); mean ± std over seeds"
    )
    print(cells.loc[order, [s for s in args.partitions]].to_string())
    print(
        f"server η: { {a: s.learning_rate for a, s in aggs.items()} }, "
        f"β = {args.server_momentum}, β₂ = {args.server_beta2}, τ = {args.server_tau}, "
        f"μ = {args.proximal_mu}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
