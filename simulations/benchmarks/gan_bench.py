"""dp-ctgan against dp-vae on the built-in cohort, federated at ε = 1, in one run.

What it does (no Flower, one process, the same emulation as
:mod:`simulations.benchmarks.sweep_defaults`):

* the built-in cohort (9,000 rows, public simulated data) is split into a 20%
  holdout and ``--sites`` sites by Dirichlet(``--alpha``) label skew on the target;
* for each family, ``rounds`` rounds: each site loads the global weights, runs
  ``client.training.train_dp`` for ``local_steps`` steps with σ calibrated for ε
  over ``rounds × local_steps`` steps (δ = 1e-5, RDP), and sends its clipped
  update; the server averages them (plain FedAvg, equal weights);
* baselines in the same run, per family: the same model without DP on the pooled
  training rows (``train_plain``, same steps, q and learning rate);
* as many rows as the training set are sampled and scored with
  ``shared.evaluation.api.evaluate`` (TSTR AUC with gradient boosting, on the holdout).

Tuning on the cohort spends no site's budget: it is simulated, public data.

Run: ``python -m simulations.benchmarks.gan_bench [--seeds 0] [--epsilon 1]``.
Prints one table row per (family, setting, seed), then a JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from client.site import clip_update
from client.training import train_dp, train_plain
from server.strategy import mean_update
from shared.accounting import calibrate_noise
from shared.config import ModelSettings
from shared.evaluation.api import evaluate
from shared.models import build_generator
from shared.schema import Schema
from simulations.benchmarks.sweep_defaults import DELTA, load_split, site_seed
from simulations.partition import PartitionSpec, partition

FAMILIES = ("dp-ctgan", "dp-vae")


def train_family(
    family_name: str, mode: str, schema: Schema, train: Any, args: argparse.Namespace, seed: int
) -> tuple[Any, dict[str, Any]]:
    """Train one family in ``mode`` ("fed" or "pooled-plain"); returns it and facts."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    settings = ModelSettings(generator=family_name)
    steps = args.rounds * args.local_steps
    torch.manual_seed(seed)
    family = build_generator(schema, settings)
    start = time.perf_counter()
    info: dict[str, Any] = {"sigma": None}
    common = {"sample_rate": args.sample_rate, "learning_rate": args.learning_rate}
    if mode == "pooled-plain":
        pooled = torch.from_numpy(family.encode(train))
        train_plain(family, pooled, steps=steps, device=device, seed=seed, **common)
    else:
        spec = PartitionSpec("dirichlet", alpha=args.alpha)
        sites = partition(train, schema, spec, args.sites, seed=seed)
        site_data = [torch.from_numpy(family.encode(s)) for s in sites]
        sigma = calibrate_noise(
            target_epsilon=args.epsilon, delta=DELTA, sample_rate=args.sample_rate, steps=steps
        )
        info |= {"sigma": sigma, "site_rows": [len(s) for s in sites]}
        global_state = family.state_dict()
        for rnd in range(1, args.rounds + 1):
            updates = []
            for i, data in enumerate(site_data):
                local = build_generator(schema, settings)
                local.load_state_dict(global_state)
                train_dp(
                    local,
                    data,
                    steps=args.local_steps,
                    noise_multiplier=sigma,
                    max_grad_norm=args.max_grad_norm,
                    device=device,
                    seed=site_seed(seed, i, rnd, shared=False),
                    **common,
                )
                new = local.state_dict()
                update = {k: new[k] - global_state[k] for k in global_state}
                updates.append(clip_update(update, args.update_clip_norm)[0])
            mean = mean_update(updates)
            global_state = {k: global_state[k] + mean[k] for k in global_state}
        family.load_state_dict(global_state)
    info["train_seconds"] = round(time.perf_counter() - start, 1)
    return family, info


def score(family: Any, schema: Schema, train: Any, holdout: Any, seed: int) -> dict[str, Any]:
    """TSTR/TRTR AUC (gradient boosting), mean marginal TVD / KS, association difference.

    TSTR AUC is ``None`` when the synthetic table holds one target class only
    (a collapsed generator): no classifier can be trained on it.
    """
    synthetic = family.sample(len(train), seed=seed)
    res = evaluate(holdout, synthetic, schema, train=train, seed=0)
    gb = res["utility"]["models"]["gradient_boosting"]
    return {
        "tstr_auc": gb["tstr"].get("auc"),
        "trtr_auc": gb["trtr"].get("auc"),
        "assoc_diff": res["fidelity"]["associations"]["abs_diff_mean"],
        "tvd_mean": res["fidelity"]["marginals"]["tvd_mean"],
        "ks_mean": res["fidelity"]["marginals"]["ks_mean"],
    }


def _f(x: Any, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the table and JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--modes", default="fed,pooled-plain", help="comma list of fed, pooled-plain")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds")
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=45)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--learning-rate", type=float, default=0.01)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--update-clip-norm", type=float, default=10.0)
    args = ap.parse_args(argv)
    schema, train, holdout = load_split()
    rows: list[dict[str, Any]] = []
    for name in args.families.split(","):
        for mode in args.modes.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                family, info = train_family(name, mode, schema, train, args, seed)
                out = {"family": name, "mode": mode, "seed": seed, **info}
                out |= score(family, schema, train, holdout, seed)
                rows.append(out)
                print(
                    f"[{name} {mode} seed {seed}] TSTR {_f(out['tstr_auc'])} "
                    f"TRTR {_f(out['trtr_auc'])} train {info['train_seconds']}s",
                    file=sys.stderr,
                    flush=True,
                )
    print("| family | mode | seed | σ | TSTR AUC (GB) | TRTR AUC | TVD cat | KS num | assoc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['family']} | {r['mode']} | {r['seed']} | {_f(r['sigma'], '.2f')} "
            f"| {_f(r['tstr_auc'])} | {_f(r['trtr_auc'])} | {_f(r['tvd_mean'])} | {_f(r['ks_mean'])} "
            f"| {_f(r['assoc_diff'])} |"
        )
    print(json.dumps({"args": vars(args), "delta": DELTA, "results": rows}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
