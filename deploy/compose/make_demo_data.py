"""Write the compose demo's inputs: one table per hospital and the public schema.

Run from anywhere (uses the repository's own ``shared`` package)::

    .venv/bin/python deploy/compose/make_demo_data.py            # 3 sites, 3000 rows each
    .venv/bin/python deploy/compose/make_demo_data.py --sites 3 --rows 2000 --seed 11

Writes ``deploy/compose/data/site-{0..N-1}.csv`` and ``deploy/compose/data/schema.json``.
The rows come from the simulated cardiology cohort (:mod:`shared.cohort`), so no
real patient data is involved; the folder is git-ignored all the same.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The project is used from a checkout (not necessarily installed), like the tests do.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.cohort import SCHEMA_PATH, generate_cohort  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Generate the cohort, split it evenly over the sites and write the files."""
    p = argparse.ArgumentParser(description="Write the compose demo's site tables and schema.")
    p.add_argument("--sites", type=int, default=3, help="number of hospitals (default 3)")
    p.add_argument("--rows", type=int, default=3000, help="rows per hospital (default 3000)")
    p.add_argument("--seed", type=int, default=7, help="cohort seed (same seed, same tables)")
    p.add_argument("--out", type=Path, default=HERE / "data", help="output folder")
    args = p.parse_args(argv)
    if args.sites < 1 or args.rows < 1:
        p.error("--sites and --rows must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    cohort = generate_cohort(args.sites * args.rows, seed=args.seed)
    for i in range(args.sites):
        part = cohort.iloc[i * args.rows : (i + 1) * args.rows]
        part.to_csv(args.out / f"site-{i}.csv", index=False)
    shutil.copyfile(SCHEMA_PATH, args.out / "schema.json")
    print(f"wrote {args.sites} site tables of {args.rows} rows and schema.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
