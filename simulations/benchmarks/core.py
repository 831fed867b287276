"""Core speed figures, as ratios measured in the same run.

1. DP-SGD (Poisson sampling, fused per-row clipping, Opacus noise) steps/s against plain
   Adam steps/s for the same model, the same batch size and the same data.
2. Seconds per round of a 3-site ``fedsynth simulate`` on the built-in cohort,
   with the local compute inside those rounds for comparison.

Run: ``python -m simulations.benchmarks.core [--steps 300] [--device auto]``.
Machines are noisy: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from client.training import train_dp, train_plain
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.device import select_device
from shared.models import build_generator
from shared.tables import validate_frame
from simulations.simulate import SimulationPlan, run_simulation


def encoded_cohort(rows: int) -> torch.Tensor:
    """The built-in cohort, validated and encoded."""
    schema = cohort_schema()
    raw = generate_cohort(rows, seed=1)
    frame = validate_frame(raw.astype(object).where(raw.notna(), None), schema)
    return torch.from_numpy(build_generator(schema, ModelSettings()).encode(frame))


def training_throughput(
    *, rows: int, sample_rate: float, steps: int, device: torch.device
) -> dict[str, float]:
    """DP and non-DP steps/s for the same model and batch, interleaved to share noise."""
    data = encoded_cohort(rows)
    schema = cohort_schema()
    dp_rates, plain_rates = [], []
    for repeat in range(3):
        torch.manual_seed(repeat)
        dp = train_dp(
            build_generator(schema, ModelSettings()),
            data,
            steps=steps,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            sample_rate=sample_rate,
            learning_rate=1e-2,
            device=device,
            seed=repeat,
        )
        plain = train_plain(
            build_generator(schema, ModelSettings()),
            data,
            steps=steps,
            sample_rate=sample_rate,
            learning_rate=1e-2,
            device=device,
            seed=repeat,
        )
        dp_rates.append(dp.steps / dp.seconds)
        plain_rates.append(plain.steps / plain.seconds)
    dp_best, plain_best = max(dp_rates), max(plain_rates)
    return {
        "batch": round(rows * sample_rate),
        "dp_steps_per_s": dp_best,
        "plain_steps_per_s": plain_best,
        "dp_over_plain": dp_best / plain_best,
    }


def simulation_rounds(*, rounds: int, local_steps: int) -> dict[str, float]:
    """Seconds per round of a 3-site simulation (round 1 includes worker start-up)."""
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        plan = SimulationPlan(
            out=Path(tmp) / "out",
            sites=3,
            partition="iid",
            holdout=0.2,
            data=None,
            schema=None,
            settings={
                "rounds": rounds,
                "local-steps": local_steps,
                "epsilon": 3.0,
                "synthetic-rows": 1000,
                "device": "cpu",
            },
            echo=False,
        )
        start = time.perf_counter()
        out = run_simulation(plan)
        total = time.perf_counter() - start
        history = json.loads((out / "privacy_report.json").read_text())["round_history"]
    seconds = [h["seconds"] for h in history]
    steady = seconds[1:] or seconds
    return {
        "rounds": len(seconds),
        "first_round_s": seconds[0],
        "steady_round_s": sum(steady) / len(steady),
        "whole_command_s": total,
    }


def main() -> None:
    """Print the figures as a table and as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=45)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args()
    device = select_device(args.device)
    train = training_throughput(
        rows=args.rows, sample_rate=args.sample_rate, steps=args.steps, device=device
    )
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    print(f"DP-SGD training, batch {train['batch']} (Poisson expected), same model and batch:")
    print(f"  DP (fused clipping)  {train['dp_steps_per_s']:8.1f} steps/s")
    print(f"  non-DP               {train['plain_steps_per_s']:8.1f} steps/s")
    print(f"  DP / non-DP ratio    {train['dp_over_plain']:8.2f}")
    result: dict[str, object] = {"device": str(device), "training": train}
    if not args.skip_simulation:
        sim = simulation_rounds(rounds=args.rounds, local_steps=args.local_steps)
        print(f"3-site simulation, {sim['rounds']} rounds × {args.local_steps} local steps:")
        print(
            f"  first round          {sim['first_round_s']:8.1f} s (starts the simulation workers)"
        )
        print(f"  later rounds         {sim['steady_round_s']:8.1f} s per round")
        print(f"  whole command        {sim['whole_command_s']:8.1f} s")
        result["simulation"] = sim
    print(json.dumps(result))


if __name__ == "__main__":
    main()
