"""Generator families side by side: TSTR AUC of each family, federated at ε per site and pooled without DP.

On the built-in cohort (holdout 20 %, the split of ``fedsynth simulate``), split
over ``--sites`` Dirichlet(``--alpha``) label-skewed sites, each family in
``--families`` is trained twice in the same run:

* ``federated``: FedAvg of local DP-SGD updates at ε per site (the maths of a
  ``fedsynth simulate`` round, in process: :func:`simulations.placement.train_local`),
  with ``fedsynth simulate``'s defaults for rounds, local steps, q, C and learning rate;
* ``pooled-nodp``: the same family on the union of the training rows, no DP
  (``--pooled-steps`` steps of :func:`client.training.train_plain`).

Each model samples as many rows as the training set; TSTR AUC of gradient boosting
and logistic regression is measured on the holdout, next to TRTR.

Run: ``python -m simulations.benchmarks.families [--seeds 1] [--epsilon 1]``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
import torch

from client.training import train_plain
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings, RunSettings
from shared.evaluation.inputs import Limits
from shared.evaluation.utility import utility
from shared.models import available_families, build_generator
from shared.models.base import GeneratorFamily
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.partition import DEFAULT_HOLDOUT, PartitionSpec, partition, split_holdout
from simulations.placement import train_local

LIMITS = Limits(importance_rows=200, importance_repeats=1)
_D = RunSettings()
Row = tuple[str, str, int, float, float, float]


def _split(
    seed: int, sites: int, alpha: float, rows: int
) -> tuple[Schema, pd.DataFrame, pd.DataFrame, list[pd.DataFrame]]:
    """Holdout and site tables as ``fedsynth simulate --seed SEED`` makes them."""
    schema = cohort_schema()
    raw = generate_cohort(rows, seed=seed + 7)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    test, train = split_holdout(frame, DEFAULT_HOLDOUT, seed=seed)
    parts = partition(train, schema, PartitionSpec("dirichlet", alpha=alpha), sites, seed=seed)
    return schema, train, test, parts


def _aucs(
    schema: Schema, train: pd.DataFrame, test: pd.DataFrame, synth: pd.DataFrame, seed: int
) -> tuple[float, float, float]:
    """TSTR AUC (gradient boosting, linear) and TRTR AUC (gradient boosting)."""
    res = utility(train, test, synth, schema, schema.roles["target"], LIMITS, seed)["models"]
    gb, lin = res["gradient_boosting"], res["linear"]
    return (
        gb["tstr"].get("auc", float("nan")),
        lin["tstr"].get("auc", float("nan")),
        gb["trtr"]["auc"],
    )


def _fit(
    how: str, f: GeneratorFamily, args: argparse.Namespace, sites: list[torch.Tensor], seed: int
) -> None:
    if how == "federated":
        train_local(
            f,
            sites,
            epsilon=args.epsilon,
            delta=args.delta,
            rounds=args.rounds,
            local_steps=args.local_steps,
            sample_rate=args.sample_rate,
            clip_norm=args.max_grad_norm,
            learning_rate=args.learning_rate,
            update_clip_norm=_D.update_clip_norm,
            seed=seed,
        )
    else:
        train_plain(
            f,
            torch.cat(sites),
            steps=args.pooled_steps,
            sample_rate=args.sample_rate,
            learning_rate=args.learning_rate,
            device=torch.device("cpu"),
            seed=seed,
        )


def _run_seed(args: argparse.Namespace, seed: int) -> list[Row]:
    schema, train, test, parts = _split(seed, args.sites, args.alpha, args.rows)
    base = build_generator(schema, ModelSettings())
    sites = [torch.from_numpy(base.encode(p)) for p in parts]
    rows: list[Row] = []
    trtr = float("nan")
    for family in args.families:
        settings = replace(ModelSettings(), generator=family, diffusion_steps=args.diffusion_steps)
        for how in ("federated", "pooled-nodp"):
            torch.manual_seed(seed)
            f = build_generator(schema, settings)
            t0 = time.perf_counter()
            _fit(how, f, args, sites, seed)
            seconds = time.perf_counter() - t0
            gb, lin, trtr = _aucs(schema, train, test, f.sample(len(train), seed=seed), seed)
            rows.append((family, how, seed, gb, lin, seconds))
            print(
                f"seed {seed} {family} {how}: TSTR AUC gb {gb:.3f} linear {lin:.3f} ({seconds:.0f}s)"
            )
    rows.append(("real", "TRTR", seed, trtr, float("nan"), 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--families", nargs="+", default=["dp-vae", "dp-diffusion"], choices=available_families()
    )
    p.add_argument("--epsilon", type=float, default=1.0, help="ε per row at each site")
    p.add_argument("--delta", type=float, default=_D.delta)
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    p.add_argument("--rows", type=int, default=9000, help="cohort rows (simulate's default)")
    p.add_argument("--rounds", type=int, default=_D.rounds)
    p.add_argument("--local-steps", type=int, default=_D.local_steps)
    p.add_argument("--sample-rate", type=float, default=_D.sample_rate)
    p.add_argument("--max-grad-norm", type=float, default=_D.max_grad_norm, help="C")
    p.add_argument("--learning-rate", type=float, default=_D.learning_rate)
    p.add_argument("--pooled-steps", type=int, default=2000, help="steps of the non-DP baseline")
    p.add_argument("--diffusion-steps", type=int, default=ModelSettings().diffusion_steps)
    p.add_argument("--seeds", type=int, default=1, help="repeat over this many seeds")
    p.add_argument("--first-seed", type=int, default=0)
    args = p.parse_args(argv)
    rows: list[Row] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows.extend(_run_seed(args, seed))
    table = pd.DataFrame(
        rows, columns=["family", "training", "seed", "tstr_auc_gb", "tstr_auc_linear", "train_s"]
    )
    summary = table.groupby(["family", "training"], sort=False)[
        ["tstr_auc_gb", "tstr_auc_linear", "train_s"]
    ].mean()
    print(
        f"\nε = {args.epsilon} per site (federated), δ = {args.delta}, {args.sites} sites "
        f"Dirichlet({args.alpha}), {args.rounds} rounds × {args.local_steps} local steps, "
        f"q = {args.sample_rate}, built-in cohort, {args.seeds} seed(s)"
    )
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
