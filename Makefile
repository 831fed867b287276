# Two commands for a fresh machine (see README):
#   make demo   set up, then simulate 3 hospitals on the built-in cohort
#   make test   set up, then run the whole test suite (what CI runs)
.PHONY: setup demo test test-fast lint bench bench-evaluate clean

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/fedsynth simulate --out runs/demo

# One math thread per process: two xdist workers (and the Flower processes they start)
# on CI's two cores otherwise oversubscribe them (the fast suite: 68 s against 50 s).
test: setup
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench: setup
	.venv/bin/python -m simulations.benchmarks.core

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache

bench-evaluate: setup
	.venv/bin/python -m simulations.benchmarks.evaluate_bench
