"""Benchmarks: run each module with ``python -m simulations.benchmarks.<name>``."""
