"""Numeric encoders compared: min–max on public bounds against the DP quantile encoder.

Both arms run the same in-process federation (FedAvg of local DP-SGD updates,
the maths of a ``fedsynth simulate`` round, :func:`simulations.placement.train_local`)
on the same Dirichlet label-skewed sites and spend the same ε per site:

* ``minmax``: DP-SGD's σ is calibrated to the whole ε;
* ``dp-quantile``: each site first releases Gaussian-noised histograms of its numeric
  columns (:mod:`shared.dp_quantile`, the same functions the ClientApp uses), the
  sums give the quantile maps, DP-SGD's σ is calibrated to ``(1 - fraction) · ε``
  and σ_h brings the composition back to ε (checked and printed).

Figures: TSTR AUC (gradient boosting and logistic regression, trained on the
synthetic rows, tested on real held-out rows), the mean 1-way total variation
similarity (1 - TVD, numeric columns on the evaluation's histogram bins, missing
counted), and the mean KS statistic of the numeric columns.

Run: ``python -m simulations.benchmarks.encoders [--seeds 3] [--table nhefs]``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from shared.accounting import calibrate_noise, epsilon_of
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.dp_quantile import (
    add_histogram_noise,
    calibrate_histogram_noise,
    cdf_from_counts,
    column_histogram,
)
from shared.evaluation.fidelity import marginals
from shared.evaluation.inputs import Limits
from shared.evaluation.utility import utility
from shared.models import build_generator
from shared.models.base import GeneratorFamily
from shared.schema import Schema
from shared.tables import validate_frame
from simulations.partition import PartitionSpec, partition
from simulations.placement import train_local

LIMITS = Limits(importance_rows=200, importance_repeats=1)
ENCODERS = ("minmax", "dp-quantile")


def load(table: str, rows: int, seed: int) -> tuple[pd.DataFrame, Schema]:
    """The validated table (``cohort``: generated with ``rows`` rows; ``nhefs``: offline)."""
    if table == "nhefs":
        from simulations.nhefs import load_nhefs

        frame, schema = load_nhefs()
        # NHEFS has no target role; its treatment (quitting smoking) is the label to skew
        # the sites by and to predict (a public choice for this benchmark only).
        return frame, replace(schema, roles={**schema.roles, "target": schema.roles["treatment"]})
    schema = cohort_schema()
    raw = generate_cohort(rows, seed=seed + 7)
    return validate_frame(raw.astype(object).where(raw.notna(), None), schema), schema


def fit_dp_encoder(
    family: GeneratorFamily, parts: list[pd.DataFrame], *, noise_multiplier: float, seed: int
) -> None:
    """Each site's noisy histograms, summed, installed as ``family``'s quantile maps."""
    numeric = [c for c in family.schema.columns if c.is_numeric]
    bins = family.settings.encoder_bins
    total = np.zeros((len(numeric), bins))
    for i, part in enumerate(parts):
        counts = np.stack(
            [
                column_histogram(
                    part[c.name].to_numpy(dtype=np.float64, na_value=np.nan),
                    minimum=c.minimum,
                    maximum=c.maximum,
                    bins=bins,
                    atoms=c.atoms,
                )
                for c in numeric
            ]
        )
        rng = np.random.default_rng([seed, i])
        total += add_histogram_noise(counts, noise_multiplier=noise_multiplier, rng=rng)
    family.set_numeric_encoder(np.stack([cdf_from_counts(h) for h in total]))


def fidelity(real: pd.DataFrame, synth: pd.DataFrame, schema: Schema) -> tuple[float, float]:
    """Mean 1-way TV similarity over all columns, mean KS over numeric columns."""
    cols = marginals(real, synth, schema)["columns"]
    tvd = []
    for entry in cols.values():
        if "tvd" in entry:
            tvd.append(entry["tvd"])
        else:
            diff = np.abs(entry["plot"]["real"] - entry["plot"]["synthetic"]).sum()
            tvd.append(0.5 * (diff + abs(entry["missing_real"] - entry["missing_synthetic"])))
    ks = [e["ks"] for e in cols.values() if e.get("ks") is not None]
    return 1.0 - float(np.mean(tvd)), float(np.mean(ks))


def run_arm(
    encoder: str,
    args: argparse.Namespace,
    seed: int,
    schema: Schema,
    train: pd.DataFrame,
    test: pd.DataFrame,
    parts: list[pd.DataFrame],
) -> dict[str, Any]:
    """Train one arm and score it."""
    steps = args.rounds * args.local_steps
    settings = ModelSettings(numeric_encoder=encoder, encoder_bins=args.bins)
    torch.manual_seed(seed)
    family = build_generator(schema, settings)
    sgd_epsilon = args.epsilon
    history: list[tuple[float, float, int]] = []
    sigma_h = float("nan")
    if encoder == "dp-quantile":
        sgd_epsilon = args.epsilon * (1.0 - args.fraction)
        sigma = calibrate_noise(
            target_epsilon=sgd_epsilon, delta=args.delta, sample_rate=args.sample_rate, steps=steps
        )
        sigma_h = calibrate_histogram_noise(
            target_epsilon=args.epsilon,
            delta=args.delta,
            training=(sigma, args.sample_rate, steps),
        )
        fit_dp_encoder(family, parts, noise_multiplier=sigma_h, seed=seed)
        history.append((sigma_h, 1.0, 1))
    sigma = calibrate_noise(
        target_epsilon=sgd_epsilon, delta=args.delta, sample_rate=args.sample_rate, steps=steps
    )
    history.append((sigma, args.sample_rate, steps))
    sites = [torch.from_numpy(family.encode(p)) for p in parts]
    t0 = time.perf_counter()
    train_local(
        family,
        sites,
        epsilon=sgd_epsilon,
        delta=args.delta,
        rounds=args.rounds,
        local_steps=args.local_steps,
        sample_rate=args.sample_rate,
        clip_norm=1.0,
        learning_rate=args.learning_rate,
        update_clip_norm=10.0,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    synth = family.sample(len(train), seed=seed)
    res = utility(train, test, synth, schema, schema.roles["target"], LIMITS, seed)["models"]
    tv, ks = fidelity(test, synth, schema)
    return {
        "encoder": encoder,
        "seed": seed,
        "epsilon": epsilon_of(history, delta=args.delta),
        "sigma": sigma,
        "sigma_h": sigma_h,
        "tstr_auc_gb": res["gradient_boosting"]["tstr"].get("auc", float("nan")),
        "tstr_auc_linear": res["linear"]["tstr"].get("auc", float("nan")),
        "trtr_auc_gb": res["gradient_boosting"]["trtr"]["auc"],
        "tv_similarity": tv,
        "ks_mean": ks,
        "train_s": seconds,
    }


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """Both arms on one split of one seed."""
    frame, schema = load(args.table, args.rows, seed)
    order = np.random.default_rng(seed).permutation(len(frame))
    n_hold = round(0.2 * len(frame))
    test = frame.iloc[order[:n_hold]].reset_index(drop=True)
    train = frame.iloc[order[n_hold:]].reset_index(drop=True)
    spec = PartitionSpec("dirichlet", alpha=args.alpha)
    parts = partition(train, schema, spec, args.sites, seed=seed)
    out = []
    for encoder in args.encoders:
        row = run_arm(encoder, args, seed, schema, train, test, parts)
        print(
            f"seed {seed} {encoder:12s} ε={row['epsilon']:.4f} σ={row['sigma']:.3f} "
            f"σ_h={row['sigma_h']:.2f}  TSTR AUC gb {row['tstr_auc_gb']:.3f} "
            f"lin {row['tstr_auc_linear']:.3f}  TV sim {row['tv_similarity']:.3f} "
            f"KS {row['ks_mean']:.3f}  ({row['train_s']:.0f}s)",
            flush=True,
        )
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both arms over the seeds and print the table of means."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", choices=["cohort", "nhefs"], default="cohort")
    p.add_argument("--epsilon", type=float, default=1.0, help="total ε per row (per site)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--fraction", type=float, default=0.1, help="encoder-budget-fraction")
    p.add_argument("--bins", type=int, default=64, help="histogram bins per numeric column")
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--rows", type=int, default=9000, help="cohort rows (simulate's default)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    p.add_argument("--sample-rate", type=float, default=0.11)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--local-steps", type=int, default=9)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0)
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows.extend(run_seed(args, seed))
    table = pd.DataFrame(rows)
    cols = ["tstr_auc_gb", "tstr_auc_linear", "tv_similarity", "ks_mean", "epsilon"]
    summary = table.groupby("encoder", sort=False)[cols].agg(["mean", "std"])
    print(
        f"\n{args.table}: ε = {args.epsilon} per site (δ = {args.delta}), {args.sites} sites "
        f"Dirichlet({args.alpha}), {args.rounds} rounds × {args.local_steps} local steps, "
        f"{args.seeds} seed(s); TRTR AUC gb {table['trtr_auc_gb'].mean():.3f}"
    )
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
