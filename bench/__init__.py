"""Benchmarks: `make bench` (python -m bench.run) runs every bench/bench_*.py module."""
