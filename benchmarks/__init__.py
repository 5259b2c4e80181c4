"""Benchmark scripts, each run from the repository root as `python -m benchmarks.NAME`; what they share
is in benchmarks/common.py, their figures in benchmarks/RESULTS.md."""
