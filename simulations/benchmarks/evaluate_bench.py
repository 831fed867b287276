"""Benchmark ``fedsynth evaluate`` on a 50,000 × 15 mixed table (the built-in cohort).

Writes a real training table, a real holdout and a "synthetic" table (three
cohort draws with different seeds) as CSV, then times the full evaluation from
the files (loading and validation included, all four sections on, default
sample sizes) plus writing ``report.json`` and ``report.html``. The process is
pinned to two cores, the target machine size. Target: under 60 s.

Run: ``python -m simulations.benchmarks.evaluate_bench [--rows N] [--cores K] [--threads T]``.
Exit code 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from shared.cohort import SCHEMA_PATH, generate_cohort
from shared.evaluation import Limits, evaluate, write_report

TARGET_S = 60.0


def _pin(cores: int) -> int:
    """Restrict this process (and its OpenMP/BLAS pools) to ``cores`` CPUs; return the count."""
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(available[:cores]))
        return len(os.sched_getaffinity(0))
    return cores


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the timings; return 0 if under the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows in each table")
    parser.add_argument("--cores", type=int, default=2, help="CPUs to pin the process to")
    parser.add_argument(
        "--threads",
        type=int,
        default=Limits().threads,
        help="model-fitting threads (Limits.threads; 0 = every pinned core)",
    )
    args = parser.parse_args(argv)
    cores = _pin(args.cores)
    limits = Limits(threads=args.threads or None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {}
        for name, seed in (("train", 1), ("holdout", 2), ("synthetic", 3)):
            paths[name] = folder / f"{name}.csv"
            generate_cohort(args.rows, seed=seed).to_csv(paths[name], index=False)
        start = time.perf_counter()
        result = evaluate(
            paths["holdout"],
            paths["synthetic"],
            SCHEMA_PATH,
            train=paths["train"],
            seed=0,
            limits=limits,
        )
        evaluated = time.perf_counter()
        write_report(result, folder / "report")
        total = time.perf_counter() - start
    sections = ", ".join(f"{k} {v:.1f}s" for k, v in result["timings_s"].items())
    threads = "all pinned cores" if limits.threads is None else limits.threads
    print(
        f"evaluate {args.rows:,} x 15 cohort rows (train, holdout, synthetic) on {cores} "
        f"core(s), model threads: {threads}"
    )
    print(f"  sections: {sections}")
    print(
        f"  evaluate() {evaluated - start:.1f}s (incl. loading + validation), report files "
        f"{total - (evaluated - start):.1f}s"
    )
    verdict = "OK" if total < TARGET_S else "OVER TARGET"
    print(f"  total {total:.1f}s (target < {TARGET_S:.0f}s): {verdict}")
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
