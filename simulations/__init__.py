"""Scenarios that run every site on one machine, and the benchmarks."""
